package e2e

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/internal/browsertest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// TestOZOAccountInBrowser is issue 16's acceptance in headless Chromium against real Dendrite:
// Alice, a practitioner on hs1, invites a caregiver's email before any account exists; an admin
// provisions the caregiver from a FHIR RelatedPerson; the invitation mail arrives; the caregiver
// opens its link, sets a password, enrols TOTP (the test computes codes from the secret the page
// shows), confirms a first code and sees the recovery codes; then logs in with password and
// code, the OZO app having started the login with a PKCE challenge, and follows the link to the
// app, whose URL carries a one-time code and no token; the app redeems the code with its
// verifier for a Matrix access token that works (/whoami on hs2), and only once. With it the
// caregiver joins Alice's room, and Alice sees it.
// On the way: a form posted without its CSRF token is refused and changes nothing, and every
// page passes axe-core. At the end the audit trail holds each step — provisioning by the admin,
// activation and login by the caregiver, the reused link refused — under the RelatedPerson's
// reference, and no BSN.
func TestOZOAccountInBrowser(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `<!doctype html><html lang="en"><head><title>OZO app</title></head><body><main><h1>OZO app</h1></main></body></html>`)
	}))
	defer app.Close()
	appURL := app.URL + "/login-done"
	s := StartOZOStack(t, sqlstore.Postgres, func(c *config.Config) { c.OZOAccounts.ClientURLs = []string{appURL} })
	ctx := t.Context()
	const addr = "els.devries@example.org"

	alice := s.HS1.Register(t, "alice")
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Zorg voor moeder"})
	if err != nil {
		t.Fatal(err)
	}
	ward := s.HS2.Register(t, "ward") // hs2 knows the room through ward's pending invite
	if _, err := alice.InviteUser(ctx, room.RoomID, &mautrix.ReqInviteUser{UserID: ward.UserID}); err != nil {
		t.Fatal(err)
	}
	waitInvite(t, ward, room.RoomID)
	if _, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{IDServer: s.IS.Name, Medium: "email", Address: addr}); err != nil {
		t.Fatalf("invite %s: %v", addr, err)
	}
	s.IS.Mail.Wait(t, addr, 1, mailWait)

	resource := `{"resourceType": "RelatedPerson", "id": "rp-4711", "active": true,
		"identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "999911120"}],
		"patient": {"reference": "Patient/p-1"},
		"name": [{"use": "official", "given": ["Els"], "family": "de Vries"}],
		"telecom": [{"system": "email", "value": "` + addr + `"}]}`
	if status, resp := s.IS.raw(t, nil, http.MethodPost, "/_ozo/admin/v1/fhir/RelatedPerson", "Bearer "+s.IS.AdminToken, "application/fhir+json", resource); status != http.StatusCreated {
		t.Fatalf("provision: %d %v", status, resp)
	}
	link := s.ActivationLink(t, addr, 2)

	b := browsertest.New(t, browsertest.Options{AcceptLanguage: "nl-NL,nl;q=0.9", IgnoreCertErrors: true})
	if st := b.Open(link); st != http.StatusOK {
		t.Fatalf("activation link: HTTP %d", st)
	}
	if loc := b.Location(); strings.Contains(loc, "token=") {
		t.Fatalf("the token stays in the address bar: %s", loc)
	}
	accountPage(t, b, "nl", "Uw OZO-account activeren")
	if got := b.Text("#account-email"); got != addr {
		t.Fatalf("activation page for %q", got)
	}
	const password = "Moeder's zorg gaat voor 2026"
	b.Fill("#password", password)
	b.Fill("#password2", password)
	if st := b.Submit(`button[type="submit"]`); st != http.StatusOK {
		t.Fatalf("set password: HTTP %d", st)
	}
	accountPage(t, b, "nl", "Authenticator-app koppelen")
	if w := browsertest.Eval[int](b, `document.querySelector("img").naturalWidth`); w < 200 {
		t.Fatalf("the QR code did not load (width %d)", w)
	}
	secret := b.Text("#totp-secret")
	b.Screenshot("enrol")
	now := time.Now()
	code, _ := totp.GenerateCode(secret, now)
	b.Fill("#code", code)
	if st := b.Submit(`button[type="submit"]`); st != http.StatusOK {
		t.Fatalf("confirm code: HTTP %d", st)
	}
	accountPage(t, b, "nl", "Uw account is actief")
	if n := browsertest.Eval[int](b, `document.querySelectorAll("#recovery-codes li").length`); n != 10 {
		t.Fatalf("%d recovery codes shown", n)
	}
	// The mailed link is spent.
	if st := b.Open(link); st != http.StatusBadRequest || !strings.Contains(b.Text("#reason"), "al gebruikt") {
		t.Fatalf("reused activation link: HTTP %d, %q", st, b.Text("#reason"))
	}

	// Login, in English this time, for the OZO app, which holds a PKCE verifier.
	verifier := strings.Repeat("the OZO app's own secret verifier ", 3)[:96]
	verifier = strings.ReplaceAll(strings.ReplaceAll(verifier, " ", "-"), "'", "_")
	sum := sha256.Sum256([]byte(verifier))
	login := s.IS.URL + "/_ozo/web/account/login?" + url.Values{"lang": {"en"}, "redirect_uri": {appURL},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"}}.Encode()
	b.Open(login)
	accountPage(t, b, "en", "Log in to OZO")
	// Posted without its CSRF token: refused, and nothing is checked (no failure counted).
	b.Fill("#email", addr)
	b.Fill("#password", "a wrong password, many times")
	browsertest.Eval[bool](b, `document.querySelector('input[name="csrf_token"]').remove(), true`)
	if st := b.Submit(`button[type="submit"]`); st != http.StatusForbidden {
		t.Fatalf("login without CSRF token: HTTP %d", st)
	}
	accountPage(t, b, "en", "Something went wrong")
	for _, r := range s.IS.auditRecords(t) {
		if r.Action == audit.ActionLoginFailure {
			t.Fatalf("a POST without CSRF token reached the password check: %+v", r)
		}
	}
	b.Open(login)
	b.Fill("#email", addr)
	b.Fill("#password", password)
	if st := b.Submit(`button[type="submit"]`); st != http.StatusOK {
		t.Fatalf("password: HTTP %d", st)
	}
	accountPage(t, b, "en", "Code from your authenticator app")
	next, _ := totp.GenerateCode(secret, now.Add(30*time.Second)) // the first code is spent
	b.Fill("#code", next)
	if st := b.Submit(`#code-form button[type="submit"]`); st != http.StatusOK {
		t.Fatalf("code: HTTP %d", st)
	}
	accountPage(t, b, "en", "You are logged in")
	href := browsertest.Eval[string](b, `document.querySelector("#to-client").href`)
	if !strings.HasPrefix(href, appURL+"?code=") || strings.Contains(b.Text("main"), "access_token") {
		t.Fatalf("link to the app: %q", href)
	}
	if st := b.Submit("#to-client"); st != http.StatusOK || !strings.HasPrefix(b.Location(), appURL+"?code=") {
		t.Fatalf("following the link: HTTP %d at %s", st, b.Location())
	}
	landed, err := url.Parse(b.Location())
	if err != nil {
		t.Fatal(err)
	}
	handoff := landed.Query().Get("code")
	if landed.Fragment != "" || len(handoff) != 43 {
		t.Fatalf("the app got %s", landed)
	}
	// The app redeems the code with its verifier, once. (A wrong verifier and the other hostile
	// redemptions: api.TestAccountHandoff.)
	status, tok := s.IS.call(t, nil, http.MethodPost, "/_ozo/v1/accounts/token", "", map[string]any{"code": handoff, "code_verifier": verifier})
	mxid := id.UserID(fmt.Sprint(tok["user_id"]))
	if status != http.StatusOK || tok["home_server"] != s.HS2.ServerName || !strings.HasPrefix(mxid.String(), "@ozo_") ||
		tok["access_token"] == nil || tok["device_id"] == nil {
		t.Fatalf("redeem: %d %v", status, tok)
	}
	if status, resp := s.IS.call(t, nil, http.MethodPost, "/_ozo/v1/accounts/token", "", map[string]any{"code": handoff, "code_verifier": verifier}); status != http.StatusForbidden || resp["errcode"] != "M_FORBIDDEN" {
		t.Fatalf("redeemed twice: %d %v", status, resp)
	}
	cli, err := mautrix.NewClient(s.HS2.ClientURL, mxid, tok["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if who, err := cli.Whoami(ctx); err != nil || who.UserID != mxid || who.DeviceID.String() != tok["device_id"] {
		t.Fatalf("whoami with the token for the code: %v %v", who, err)
	}

	// Alice's invite, stored for the email before the account existed, reached the caregiver.
	waitInvite(t, cli, room.RoomID)
	SyncUntil(t, alice, syncWait, "the caregiver's invite", func(r *mautrix.RespSync) bool {
		return hasMembership(r, room.RoomID, mxid, event.MembershipInvite)
	})
	if _, err := cli.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatalf("caregiver joins: %v", err)
	}
	SyncUntil(t, alice, syncWait, "the caregiver joining", func(r *mautrix.RespSync) bool {
		return hasMembership(r, room.RoomID, mxid, event.MembershipJoin)
	})

	// The BSN of the resource is in no log line.
	if strings.Contains(s.IS.logs(t), "999911120") {
		t.Fatal("the BSN is logged")
	}

	// Every step of the caregiver's account is in the audit trail, in order, by who did it.
	var steps []string
	var accountID string
	for _, r := range s.IS.auditRecords(t) {
		if r.Subject != "RelatedPerson/rp-4711" {
			continue
		}
		if !strings.HasPrefix(r.Resource, "ozo_account/") || r.Source == "" || r.RequestID == "" {
			t.Errorf("record without account, source or request ID: %+v", r)
		}
		if r.Actor.Kind == audit.AgentAccount {
			accountID = r.Actor.ID
		}
		steps = append(steps, fmt.Sprintf("%s/%s/%s %s", r.Action, r.Outcome, r.Actor.Kind, strings.SplitN(r.Detail, ": ", 2)[0]))
	}
	want := []string{
		"account.create/success/admin kind=related_person",
		"account.credentials/success/admin activation link issued, valid until 20",
		"account.credentials/success/account activation",
		"account.credentials/success/account activated",
		"account.update/success/account change=matrix_user matrix_user=" + mxid.String(),
		"account.credentials/refused/anonymous activation link refused",
		"login/success/account factors=password,totp",
		// The code redeemed a second time: the first refused login of this source, so written at once.
		"login.failure/refused/anonymous handoff",
	}
	if len(steps) != len(want) {
		t.Fatalf("account records:\n%s\nwant:\n%s", strings.Join(steps, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(steps[i], want[i]) {
			t.Fatalf("account record %d: %q, want %q\nall:\n%s", i, steps[i], want[i], strings.Join(steps, "\n"))
		}
	}
	if accountID == "" || !strings.HasSuffix(mxid.String(), accountID+":"+s.HS2.ServerName) {
		t.Fatalf("the account %q acting is not the Matrix user %s", accountID, mxid)
	}
	status, export := s.IS.raw(t, nil, http.MethodGet, "/_ozo/admin/v1/audit?_format=fhir&limit=1000", "Bearer "+s.IS.AdminToken, "", "")
	if body, _ := json.Marshal(export); status != http.StatusOK || strings.Contains(string(body), "999911120") ||
		!strings.Contains(string(body), "RelatedPerson/rp-4711") {
		t.Fatalf("FHIR export: %d %s", status, body)
	}
}

// auditRecords reads the identity server's audit trail through the admin API.
func (is *IdentityServer) auditRecords(t *testing.T) []audit.Record {
	t.Helper()
	status, resp := is.raw(t, nil, http.MethodGet, "/_ozo/admin/v1/audit?limit=1000", "Bearer "+is.AdminToken, "", "")
	if status != http.StatusOK {
		t.Fatalf("audit: %d %v", status, resp)
	}
	data, _ := json.Marshal(resp["records"])
	var recs []audit.Record
	if err := json.Unmarshal(data, &recs); err != nil {
		t.Fatal(err)
	}
	return recs
}

// accountPage asserts the page's language and heading, that no inline script or style is there
// for the CSP to block, and that axe-core finds nothing serious.
func accountPage(t *testing.T, b *browsertest.Browser, lang, title string) {
	t.Helper()
	if got := browsertest.Eval[string](b, `document.documentElement.lang`); got != lang {
		t.Fatalf("html lang %q, want %q", got, lang)
	}
	if got := b.Text("h1"); got != title {
		t.Fatalf("h1 %q, want %q", got, title)
	}
	if n := browsertest.Eval[int](b, `document.querySelectorAll("script, style, [style]").length`); n != 0 {
		t.Fatalf("%d inline script or style elements", n)
	}
	b.RequireAccessible(b.Location())
}

// logs is the identity server's log so far.
func (is *IdentityServer) logs(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(is.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
