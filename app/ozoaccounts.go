package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/homeserver"
	"github.com/ozo-platform/ozo-identity/identity"
	"github.com/ozo-platform/ozo-identity/ozoaccount"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// ozoAccounts builds the OZO account service. Its events go into store's audit chain, refused
// attempts through auditor (counted per source). Without ozo_accounts.homeserver.client_url the
// accounts get no Matrix user (and no email binding).
func ozoAccounts(cfg config.Config, store *sqlstore.Store, auditor ozoaccount.Auditor, mailer ozoaccount.Mailer, svc *identity.Service,
	signer *identity.Signer, log *slog.Logger) (*ozoaccount.Service, error) {
	oc := cfg.OZOAccounts
	// TOTP secrets are sealed under a key derived from the signing key, which replicas share.
	// Replacing the signing key (signing_key_file) therefore means every account enrols again.
	secretKey, err := signer.Secret("ozo account totp")
	if err != nil {
		return nil, fmt.Errorf("derive totp key: %w", err)
	}
	var hs ozoaccount.Homeserver
	var binder ozoaccount.Binder
	if oc.Homeserver.ClientURL != "" {
		tlsCfg, err := tlsWithCA(oc.Homeserver.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ozo_accounts.homeserver.ca_file: %w", err)
		}
		client := &http.Client{Timeout: homeserver.DefaultTimeout, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
		hs = homeserver.NewAppService(oc.Homeserver.ClientURL, oc.Homeserver.ServerName, oc.Homeserver.ASToken, client)
		binder = emailBinder{svc}
	}
	return ozoaccount.New(sqlstore.NewOZOAccounts(store), auditor, mailer, hs, binder, ozoaccount.Options{
		Argon2: ozoaccount.Argon2Params{MemoryKiB: uint32(oc.Argon2.MemoryKiB), Iterations: uint32(oc.Argon2.Iterations),
			Parallelism: uint8(oc.Argon2.Parallelism)},
		Issuer:             oc.Issuer,
		PublicBaseURL:      cfg.PublicBaseURL,
		ActivationLifetime: oc.ActivationLifetime,
		ResetLifetime:      oc.ResetLifetime,
		TicketLifetime:     oc.LoginTicketLifetime,
		HandoffLifetime:    oc.CodeLifetime,
		MinPasswordLength:  oc.MinPasswordLength,
		Lockout: ozoaccount.LockoutPolicy{Free: oc.Lockout.FreeAttempts, Base: oc.Lockout.BaseDelay,
			Max: oc.Lockout.MaxDelay, Window: oc.Lockout.Window},
		Matrix:    ozoaccount.MatrixConfig{ServerName: oc.Homeserver.ServerName, UserPrefix: oc.Homeserver.UserPrefix},
		SecretKey: secretKey,
	}, log)
}

// emailBinder binds an OZO account's email through the identity service, so that invites
// stored for it are delivered to the new user (onbind queue).
type emailBinder struct{ svc *identity.Service }

func (b emailBinder) BindEmail(ctx context.Context, address, mxid string) error {
	_, err := b.svc.AdminBind(ctx, "email", address, mxid, "ozo_account")
	return err
}

func (b emailBinder) UnbindEmail(ctx context.Context, address string) error {
	err := b.svc.AdminUnbind(ctx, "email", address)
	var ie *identity.Error
	if errors.As(err, &ie) && ie.Code == identity.CodeNotFound {
		return nil
	}
	return err
}
