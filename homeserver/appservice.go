package homeserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// ErrUserInUse: the account to register exists already.
var ErrUserInUse = errors.New("homeserver: user ID in use")

// AppService creates and logs in accounts in an application service's exclusive user namespace
// on one homeserver the operator runs: practitioners who prove who they are get an account
// without a password ever existing (m.login.application_service).
type AppService struct {
	clientURL string
	asToken   string
	client    *http.Client
}

// NewAppService talks to the homeserver's client API at clientURL with the registration's as_token.
func NewAppService(clientURL, asToken string, client *http.Client) *AppService {
	if client == nil {
		client = http.DefaultClient
	}
	return &AppService{clientURL: strings.TrimRight(clientURL, "/"), asToken: asToken, client: client}
}

// Register creates @localpart on the homeserver; ErrUserInUse when it exists.
func (a *AppService) Register(ctx context.Context, localpart string) (string, error) {
	var out struct {
		UserID string `json:"user_id"`
	}
	err := a.post(ctx, "/_matrix/client/v3/register", map[string]any{
		"type": "m.login.application_service", "username": localpart, "inhibit_login": true}, &out)
	if err != nil {
		return "", fmt.Errorf("register %s: %w", localpart, err)
	}
	return out.UserID, nil
}

// Login returns a new access token (and its device) for @localpart.
func (a *AppService) Login(ctx context.Context, localpart string) (userID, accessToken, deviceID string, err error) {
	var out struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	err = a.post(ctx, "/_matrix/client/v3/login", map[string]any{"type": "m.login.application_service",
		"identifier": map[string]string{"type": "m.id.user", "user": localpart}}, &out)
	if err != nil {
		return "", "", "", fmt.Errorf("log in %s: %w", localpart, err)
	}
	if out.AccessToken == "" {
		return "", "", "", fmt.Errorf("log in %s: %w: no access token", localpart, ErrBadResponse)
	}
	return out.UserID, out.AccessToken, out.DeviceID, nil
}

func (a *AppService) post(ctx context.Context, path string, body, out any) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.clientURL+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+a.asToken)
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, DefaultMaxResponseBytes))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	if resp.StatusCode != http.StatusOK {
		var me struct {
			Errcode string `json:"errcode"`
			Error   string `json:"error"`
		}
		json.Unmarshal(data, &me)
		switch {
		case me.Errcode == "M_USER_IN_USE":
			return ErrUserInUse
		case resp.StatusCode >= 500:
			return fmt.Errorf("%w: %s %s", ErrServerError, resp.Status, me.Errcode)
		case resp.StatusCode == http.StatusTooManyRequests:
			return fmt.Errorf("%w: %s", ErrRateLimited, me.Errcode)
		default:
			return fmt.Errorf("%w: %s %s: %s", ErrRejected, resp.Status, me.Errcode, me.Error)
		}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	return nil
}
