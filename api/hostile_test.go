package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"maunium.net/go/mautrix/federation"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// Hostile requests get the right error, and what was stored before (a binding, a pending invite)
// still resolves after each of them.
func TestHostileInputKeepsState(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, e sqlstore.Engine) {
		h := apitest.New(t, e)
		alice := h.NewUser(t, "alice")
		bob := h.NewUser(t, "bob")
		noTerms := h.Register(t, "carol")
		bound := "alice@example.org"
		h.Bind(t, alice, bound)
		inv := storeInvite(t, h, alice, emailInvite(alice, "pending@example.org"))
		ephemeral := inv.PublicKeys[1].PublicKey
		priv := inviteSignURL(t, h.Mail.Wait(t, "pending@example.org", 1, apitest.MailWait)).Query().Get("private_key")
		bobSession := h.ValidateEmail(t, bob, "bob@example.org")
		mailsBefore := len(h.Mail.Messages())

		intact := func(t *testing.T) {
			t.Helper()
			if got := h.LookupOne(t, bob, "email", bound); got != alice.MXID {
				t.Fatalf("binding of %s lost: resolves to %q", bound, got)
			}
			if got := lookupHashed(t, h, bob, sha256Hash(bound, "email", h.Pepper(t, bob))); len(got) != 1 {
				t.Fatalf("hashed lookup of %s: %v", bound, got)
			}
			h.Post(t, v2+"/sign-ed25519", bob.Token, map[string]any{"mxid": bob.MXID, "token": inv.Token, "private_key": priv}).
				Want(t, http.StatusOK, "")
			if !valid(t, h.Get(t, v2+"/pubkey/ephemeral/isvalid"+q("public_key", ephemeral), "").Want(t, http.StatusOK, "")) {
				t.Fatal("the pending invite's ephemeral key is no longer valid")
			}
			if n := len(h.HS.OnBinds()); n != 0 {
				t.Fatalf("the pending invite was delivered (%d onbinds)", n)
			}
		}
		intact(t)

		pepper := h.Pepper(t, bob)
		big := `{"pad":"` + strings.Repeat("x", int(h.Config.HTTP.MaxBodyBytes)) + `"}`
		batch := make([]string, h.Config.Lookup.MaxBatch+1)
		for i := range batch {
			batch[i] = sha256Hash(bound, "email", pepper)
		}
		unbind := func(addr string) map[string]any {
			return map[string]any{"mxid": alice.MXID, "threepid": map[string]string{"medium": "email", "address": addr}}
		}
		withSession := func(body map[string]any, s apitest.Session) map[string]any {
			body["sid"], body["client_secret"] = s.SID, s.ClientSecret
			return body
		}
		forger := federation.GenerateSigningKey()
		forger.ID = h.HS.Key.ID
		forgedUnbind, _ := json.Marshal(unbind(bound))

		cases := []struct {
			name    string
			req     apitest.Request
			status  int
			errcode string
		}{
			// Malformed JSON.
			{"lookup broken JSON", post(v2+"/lookup", bob.Token, `{"addresses": [`), 400, "M_NOT_JSON"},
			{"bind form body", post(v2+"/3pid/bind", alice.Token, "sid=1&mxid=@alice"), 400, "M_NOT_JSON"},
			{"store-invite broken JSON", post(v2+"/store-invite", alice.Token, `{"medium":`), 400, "M_NOT_JSON"},
			{"register empty body", post(v2+"/account/register", "", ""), 400, "M_NOT_JSON"},
			{"unbind broken JSON", post(v2+"/3pid/unbind", "", `{"mxid"`), 400, "M_NOT_JSON"},
			{"terms broken JSON", post(v2+"/terms", bob.Token, `{`), 400, "M_NOT_JSON"},
			// Wrong types.
			{"requestToken array body", post(v2+"/validate/email/requestToken", bob.Token, `[1,2]`), 400, "M_BAD_JSON"},
			{"lookup addresses string", post(v2+"/lookup", bob.Token, map[string]any{"addresses": "x", "algorithm": "none", "pepper": pepper}), 400, "M_BAD_JSON"},
			{"requestToken numeric secret", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": 12, "email": bound, "send_attempt": 1}), 400, "M_BAD_JSON"},
			{"requestToken send_attempt \"1.5\"", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": bound, "send_attempt": "1.5"}), 400, "M_BAD_JSON"},
			{"requestToken send_attempt \"-1\"", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": bound, "send_attempt": "-1"}), 400, "M_BAD_JSON"},
			{"requestToken send_attempt \" 1\"", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": bound, "send_attempt": " 1"}), 400, "M_BAD_JSON"},
			{"requestToken send_attempt \"1e3\"", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": bound, "send_attempt": "1e3"}), 400, "M_BAD_JSON"},
			{"requestToken send_attempt \"\"", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": bound, "send_attempt": ""}), 400, "M_BAD_JSON"},
			{"requestToken send_attempt 1.5", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": bound, "send_attempt": 1.5}), 400, "M_BAD_JSON"},
			{"requestToken send_attempt \"99999999999999999999\"", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": bound, "send_attempt": "99999999999999999999"}), 400, "M_BAD_JSON"},
			{"requestToken send_attempt true", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": bound, "send_attempt": true}), 400, "M_BAD_JSON"},
			{"store-invite numeric address", post(v2+"/store-invite", alice.Token, map[string]any{"medium": "email", "address": 5, "room_id": "!r:hs", "sender": alice.MXID}), 400, "M_BAD_JSON"},
			{"bind object sid", post(v2+"/3pid/bind", alice.Token, map[string]any{"sid": map[string]any{}, "client_secret": "s", "mxid": alice.MXID}), 400, "M_BAD_JSON"},
			{"terms string accepts", post(v2+"/terms", bob.Token, map[string]any{"user_accepts": apitest.PrivacyURLEn}), 400, "M_BAD_JSON"},
			{"unbind string threepid", post(v2+"/3pid/unbind", "", map[string]any{"mxid": alice.MXID, "threepid": "email"}), 400, "M_BAD_JSON"},
			{"submitToken numeric token", post(v2+"/validate/email/submitToken", bob.Token, map[string]any{"sid": bobSession.SID, "client_secret": bobSession.ClientSecret, "token": 123456}), 400, "M_BAD_JSON"},
			// Missing fields.
			{"lookup empty", post(v2+"/lookup", bob.Token, map[string]any{}), 400, "M_MISSING_PARAMS"},
			{"lookup no pepper", post(v2+"/lookup", bob.Token, map[string]any{"addresses": []string{}, "algorithm": "sha256"}), 400, "M_MISSING_PARAMS"},
			{"bind only sid", post(v2+"/3pid/bind", alice.Token, map[string]any{"sid": "x"}), 400, "M_MISSING_PARAMS"},
			{"store-invite no room", post(v2+"/store-invite", alice.Token, map[string]any{"medium": "email", "address": "x@example.org"}), 400, "M_MISSING_PARAMS"},
			{"requestToken no secret", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"email": "x@example.org", "send_attempt": 1}), 400, "M_MISSING_PARAMS"},
			{"requestToken no attempt", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"email": "x@example.org", "client_secret": "s"}), 400, "M_MISSING_PARAMS"},
			{"submitToken only sid", post(v2+"/validate/email/submitToken", bob.Token, map[string]any{"sid": bobSession.SID}), 400, "M_MISSING_PARAMS"},
			{"register empty object", post(v2+"/account/register", "", map[string]any{}), 400, "M_MISSING_PARAMS"},
			{"unbind empty object", post(v2+"/3pid/unbind", "", map[string]any{}), 400, "M_MISSING_PARAMS"},
			{"terms empty object", post(v2+"/terms", bob.Token, map[string]any{}), 400, "M_MISSING_PARAMS"},
			{"getValidated3pid no query", get(v2+"/3pid/getValidated3pid", bob.Token), 400, "M_MISSING_PARAMS"},
			{"sign-ed25519 empty", post(v2+"/sign-ed25519", bob.Token, map[string]any{}), 400, "M_MISSING_PARAMS"},
			// Oversize bodies and batches.
			// The lookup bound fits max_batch of the longest addresses (see TestLookupBodyLimitFollowsMaxBatch).
			{"lookup oversize", post(v2+"/lookup", bob.Token, `{"pad":"`+strings.Repeat("x", int(h.Config.HTTP.MaxBodyBytes)+h.Config.Lookup.MaxBatch*600)+`"}`), 413, "M_TOO_LARGE"},
			{"store-invite oversize", post(v2+"/store-invite", alice.Token, big), 413, "M_TOO_LARGE"},
			{"register oversize", post(v2+"/account/register", "", big), 413, "M_TOO_LARGE"},
			{"unbind oversize", post(v2+"/3pid/unbind", "", big), 413, "M_TOO_LARGE"},
			{"bind oversize", post(v2+"/3pid/bind", alice.Token, big), 413, "M_TOO_LARGE"},
			{"lookup batch", post(v2+"/lookup", bob.Token, map[string]any{"addresses": batch, "algorithm": "sha256", "pepper": pepper}), 413, "M_TOO_LARGE"},
			// Invalid addresses.
			{"requestToken two @", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": "alice@evil@example.org", "send_attempt": 1}), 400, "M_INVALID_EMAIL"},
			{"requestToken display name", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": "Alice <alice@example.org>", "send_attempt": 1}), 400, "M_INVALID_EMAIL"},
			{"requestToken header injection", post(v2+"/validate/email/requestToken", bob.Token, map[string]any{"client_secret": "s", "email": "x@example.org\r\nBcc: evil@example.org", "send_attempt": 1}), 400, "M_INVALID_EMAIL"},
			{"store-invite two @", post(v2+"/store-invite", alice.Token, map[string]any{"medium": "email", "address": "a@b@example.org", "room_id": "!r:hs", "sender": alice.MXID}), 400, "M_INVALID_EMAIL"},
			{"store-invite bad uzi", post(v2+"/store-invite", alice.Token, map[string]any{"medium": "uzi", "address": "12345", "room_id": "!r:hs", "sender": alice.MXID}), 400, "M_INVALID_PARAM"},
			{"store-invite bad medium", post(v2+"/store-invite", alice.Token, map[string]any{"medium": "msisdn", "address": "31612345678", "room_id": "!r:hs", "sender": alice.MXID}), 400, "M_INVALID_PARAM"},
			{"store-invite bad room", post(v2+"/store-invite", alice.Token, map[string]any{"medium": "email", "address": "x@example.org", "room_id": "room", "sender": alice.MXID}), 400, "M_INVALID_PARAM"},
			{"unbind two @", post(v2+"/3pid/unbind", "", withSession(unbind("alice@example.org@evil.org"), bobSession)), 400, "M_INVALID_EMAIL"},
			// Someone else's binding.
			{"bind to another MXID", post(v2+"/3pid/bind", bob.Token, withSession(map[string]any{"mxid": alice.MXID}, bobSession)), 403, "M_FORBIDDEN"},
			{"unbind with a session for another 3PID", post(v2+"/3pid/unbind", "", withSession(unbind(bound), bobSession)), 403, "M_FORBIDDEN"},
			{"unbind without credentials", post(v2+"/3pid/unbind", "", unbind(bound)), 401, "M_UNAUTHORIZED"},
			{"unbind with a forged signature", apitest.Request{Method: http.MethodPost, Path: v2 + "/3pid/unbind", Body: forgedUnbind,
				Header: http.Header{"Authorization": {apitest.SignXMatrix(t, forger, h.HS.Name, http.MethodPost, v2+"/3pid/unbind", h.Config.ServerName, forgedUnbind)}}}, 401, "M_UNAUTHORIZED"},
			{"unbind signed for another server", apitest.Request{Method: http.MethodPost, Path: v2 + "/3pid/unbind", Body: forgedUnbind,
				Header: http.Header{"Authorization": {h.HS.SignRequest(t, http.MethodPost, v2+"/3pid/unbind", "other.example.org", forgedUnbind)}}}, 401, "M_UNAUTHORIZED"},
			{"store-invite for a bound address", post(v2+"/store-invite", alice.Token, emailInvite(alice, bound)), 400, "M_THREEPID_IN_USE"},
			// No token, unknown token, terms not accepted.
			{"lookup without a token", post(v2+"/lookup", "", map[string]any{"addresses": []string{}, "algorithm": "none", "pepper": pepper}), 401, "M_UNAUTHORIZED"},
			{"lookup with an unknown token", post(v2+"/lookup", "forged", map[string]any{"addresses": []string{}, "algorithm": "none", "pepper": pepper}), 401, "M_UNAUTHORIZED"},
			{"lookup without terms", post(v2+"/lookup", noTerms.Token, map[string]any{"addresses": []string{bound + " email"}, "algorithm": "none", "pepper": pepper}), 403, "M_TERMS_NOT_SIGNED"},
			{"hash_details without terms", get(v2+"/hash_details", noTerms.Token), 403, "M_TERMS_NOT_SIGNED"},
			{"store-invite without terms", post(v2+"/store-invite", noTerms.Token, emailInvite(noTerms, "x@example.org")), 403, "M_TERMS_NOT_SIGNED"},
			{"store-invite without a token", post(v2+"/store-invite", "", emailInvite(alice, "x@example.org")), 401, "M_UNAUTHORIZED"},
			{"bind without a token", post(v2+"/3pid/bind", "", withSession(map[string]any{"mxid": bob.MXID}, bobSession)), 401, "M_UNAUTHORIZED"},
			// Bad lookups and signing requests.
			{"lookup wrong pepper", post(v2+"/lookup", bob.Token, map[string]any{"addresses": []string{}, "algorithm": "sha256", "pepper": pepper + "x"}), 400, "M_INVALID_PEPPER"},
			{"lookup unknown algorithm", post(v2+"/lookup", bob.Token, map[string]any{"addresses": []string{}, "algorithm": "sha512", "pepper": pepper}), 400, "M_INVALID_PARAM"},
			{"sign-ed25519 unknown token", post(v2+"/sign-ed25519", bob.Token, map[string]any{"mxid": bob.MXID, "token": "guess", "private_key": priv}), 404, "M_NOT_FOUND"},
			{"sign-ed25519 bad key", post(v2+"/sign-ed25519", bob.Token, map[string]any{"mxid": bob.MXID, "token": inv.Token, "private_key": "!!"}), 400, "M_INVALID_PARAM"},
			{"sign-ed25519 bad mxid", post(v2+"/sign-ed25519", bob.Token, map[string]any{"mxid": "bob", "token": inv.Token, "private_key": priv}), 400, "M_INVALID_PARAM"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				h.Do(t, tc.req).Want(t, tc.status, tc.errcode)
				intact(t)
			})
		}

		// Guessing the token of a session for alice's address, up to the attempt limit.
		t.Run("wrong tokens up to the limit", func(t *testing.T) {
			s, _ := h.RequestToken(t, bob, bound)
			for range h.Config.Validation.MaxFailedAttempts {
				h.Post(t, v2+"/validate/email/submitToken", bob.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "token": "000000"}).
					Want(t, http.StatusBadRequest, "M_TOKEN_INCORRECT")
				intact(t)
			}
			h.Post(t, v2+"/validate/email/submitToken", bob.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "token": "000000"}).
				Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
			h.Post(t, v2+"/3pid/bind", bob.Token, map[string]any{"sid": s.SID, "client_secret": s.ClientSecret, "mxid": bob.MXID}).
				Want(t, http.StatusBadRequest, "M_SESSION_NOT_VALIDATED")
			intact(t)
		})

		// Only the guessing session mailed anything; no hostile request sent mail.
		if got := len(h.Mail.Messages()); got != mailsBefore+1 {
			t.Fatalf("%d mails sent during the hostile requests, want 1", got-mailsBefore)
		}
	})
}

func post(path, token string, body any) apitest.Request {
	return apitest.Request{Method: http.MethodPost, Path: path, Token: token, Body: body}
}

func get(path, token string) apitest.Request {
	return apitest.Request{Method: http.MethodGet, Path: path, Token: token}
}
