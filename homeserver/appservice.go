package homeserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// AppService makes and signs in users on the OZO homeserver through its application-service
// registration (m.login.application_service), for OZO accounts. The homeserver is the
// operator's own, configured by URL, so calls go to it directly rather than through the SSRF
// guard for third-party homeservers.
type AppService struct {
	clientURL  string
	serverName string
	token      string
	http       *http.Client
}

// NewAppService returns a client of the homeserver's client-server API at clientURL, acting
// with the application service token asToken for users on serverName. client may be nil.
func NewAppService(clientURL, serverName, asToken string, client *http.Client) *AppService {
	if client == nil {
		client = &http.Client{Timeout: DefaultTimeout}
	}
	return &AppService{clientURL: strings.TrimSuffix(clientURL, "/"), serverName: serverName, token: asToken, http: client}
}

// Register creates the user localpart; a user that exists already is fine (a retried activation).
func (a *AppService) Register(ctx context.Context, localpart string) (string, error) {
	userID, _, err := a.RegisterNew(ctx, localpart)
	return userID, err
}

// RegisterNew is Register that also says whether the user was made now (false: it existed,
// M_USER_IN_USE), so that a caller sets up a new account's profile once.
func (a *AppService) RegisterNew(ctx context.Context, localpart string) (userID string, created bool, err error) {
	userID = "@" + localpart + ":" + a.serverName
	err = a.call(ctx, "/_matrix/client/v3/register", nil, map[string]any{
		"type": "m.login.application_service", "username": localpart, "inhibit_login": true}, nil)
	var he *HTTPError
	if errors.As(err, &he) && he.Errcode == "M_USER_IN_USE" {
		return userID, false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("register %s: %w", userID, err)
	}
	return userID, true, nil
}

// ServerName is the homeserver's server name, the domain of the users it makes.
func (a *AppService) ServerName() string { return a.serverName }

// SetDisplayName sets the user's display name, the application service acting as the user.
func (a *AppService) SetDisplayName(ctx context.Context, userID, name string) error {
	err := a.do(ctx, http.MethodPut, "/_matrix/client/v3/profile/"+url.PathEscape(userID)+"/displayname",
		url.Values{"user_id": {userID}}, map[string]any{"displayname": name}, nil)
	if err != nil {
		return fmt.Errorf("set display name of %s: %w", userID, err)
	}
	return nil
}

// Login returns a new access token of userID (a new device).
func (a *AppService) Login(ctx context.Context, userID string) (string, string, error) {
	var resp struct {
		UserID      string `json:"user_id"`
		AccessToken string `json:"access_token"`
		DeviceID    string `json:"device_id"`
	}
	err := a.call(ctx, "/_matrix/client/v3/login", nil, map[string]any{
		"type":                        "m.login.application_service",
		"identifier":                  map[string]any{"type": "m.id.user", "user": userID},
		"initial_device_display_name": "OZO",
	}, &resp)
	if err != nil {
		return "", "", fmt.Errorf("log in %s: %w", userID, err)
	}
	if resp.AccessToken == "" || resp.UserID != userID {
		return "", "", fmt.Errorf("log in %s: %w: answered for %q without a token", userID, ErrBadResponse, resp.UserID)
	}
	return resp.AccessToken, resp.DeviceID, nil
}

// LogoutAll ends every session of userID (the application service acting as the user).
func (a *AppService) LogoutAll(ctx context.Context, userID string) error {
	if err := a.call(ctx, "/_matrix/client/v3/logout/all", url.Values{"user_id": {userID}}, map[string]any{}, nil); err != nil {
		return fmt.Errorf("log out %s: %w", userID, err)
	}
	return nil
}

func (a *AppService) call(ctx context.Context, path string, query url.Values, body, out any) error {
	return a.do(ctx, http.MethodPost, path, query, body, out)
}

func (a *AppService) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	u := a.clientURL + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+a.token)
	start := time.Now()
	resp, err := a.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w after %v: %v", ErrTimeout, time.Since(start).Round(time.Millisecond), err)
		}
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, DefaultMaxResponseBytes))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	if resp.StatusCode != http.StatusOK {
		return newHTTPError(resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%w: %v", ErrBadResponse, err)
		}
	}
	return nil
}
