package e2e

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/pem"
	"encoding/xml"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	crewsaml "github.com/crewjam/saml"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
	"github.com/ozo-platform/ozo-identity/lookup/mcsd/mcsdtest"
	"github.com/ozo-platform/ozo-identity/saml/samltest"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore/dbtest"
)

// The practitioners of the onboarding tests. From testdata/mcsd: 900012345 is published as
// @m.vandenberg on hs1 (the hospital's homeserver, where ozo-identity makes no accounts) and
// 900023457 as @e.mulder on hs2; 900000025 is in no directory.
const (
	newUZI       = "900000025"
	hs1UZI       = "900012345"
	onboardRedir = "https://app.ozo.example.org/onboarded"
	spoofedUZI   = "900000033"
	codeLifetime = 10 * time.Second
)

// onboardStack is ozo-identity making practitioners' accounts on hs2 (its application service's
// exclusive namespace zv_) after a login at umcx (a SAML IdP trusted for UZI numbers) or kliniek
// (a SAML IdP that asserts them untrusted); hs1 is a care provider's homeserver without one.
type onboardStack struct {
	is            *IdentityServer
	hs1, hs2      *Homeserver
	umcx, kliniek *samltest.IdP
	scheme        string
	fhir          *mcsdtest.Server
	// observer is a user on hs2 who looks at profiles.
	observer *mautrix.Client
}

func startOnboardStack(t *testing.T, engine sqlstore.Engine, scheme string, redis bool) *onboardStack {
	t.Helper()
	ca := pkitest.NewCA(t)
	dbURL := dbtest.URL(t, engine)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("localhost:%d", ln.Addr().(*net.TCPAddr).Port)
	as := &AppService{Homeserver: 1, ID: "ozo-identity", ASToken: randomHex(t, 16), HSToken: randomHex(t, 16),
		SenderLocalpart: "ozo-identity", UserPrefix: "zv_"}
	fed := StartFederation(t, Options{CA: ca, IdentityServers: []string{name}, AppService: as})
	s := &onboardStack{hs1: fed.Homeservers[0], hs2: fed.Homeservers[1], scheme: scheme,
		umcx: samltest.New(t), kliniek: samltest.New(t)}
	s.umcx.AddUser(t, "jdevries", "wachtwoord", "j.devries@umcx.nl", map[string]string{"uziNummer": newUZI})
	s.umcx.AddUser(t, "vandenberg", "wachtwoord", "m.vandenberg@umcx.nl", map[string]string{"uziNummer": hs1UZI})
	s.umcx.AddUser(t, "mulder", "wachtwoord", "e.mulder@umcx.nl", map[string]string{"uziNummer": mulderUZI})
	s.umcx.AddUser(t, "janssen", "wachtwoord", "k.janssen@umcx.nl", map[string]string{"uziNummer": spoofedUZI})
	// Mallory's IdP asserts the hospital practitioner's number, which it is not trusted for.
	s.kliniek.AddUser(t, "mallory", "wachtwoord", "mallory@kliniek.nl", map[string]string{"uziNummer": hs1UZI})

	s.fhir = mcsdtest.Start(t, mcsdtest.Options{Homeservers: map[string]string{"hs1": s.hs1.ServerName, "hs2": s.hs2.ServerName}})
	dir := config.Defaults().Directory
	fhir := s.fhir
	dir.LRZAURL = fhir.LRZAURL()
	dir.AllowedNetworks = []string{"127.0.0.0/8"}
	dir.CAFile = directoryCAFile(t, fhir)
	dir.SyncInterval = 0
	dir.RequestTimeout = 10 * time.Second

	tmp := t.TempDir()
	idpCA := filepath.Join(tmp, "idp-ca.pem")
	if err := os.WriteFile(idpCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.umcx.Server.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	// The as_token comes from a file, as a deployment's secret would.
	tokenFile := filepath.Join(tmp, "as_token")
	if err := os.WriteFile(tokenFile, []byte(as.ASToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.is = StartIdentityServer(t, ca, ISOptions{Listener: ln, DatabaseURL: dbURL, Directory: &dir, Configure: func(c *config.Config) {
		c.SSO.CAFile = idpCA
		samlIdP := func(id string, idp *samltest.IdP, trusted bool) config.IdP {
			p := config.IdP{ID: id, Name: strings.ToUpper(id), Type: "saml", URAs: []string{"17004512"},
				TrustedForUZI: trusted, Homeserver: s.hs2.ServerName}
			p.SAML.MetadataURL = idp.MetadataURL()
			p.SAML.EmailVerified = true
			p.SAML.Attributes.Subject, p.SAML.Attributes.UZI, p.SAML.Attributes.Email = "uid", "uziNummer", "mail"
			p.SAML.Attributes.DisplayName = "cn"
			return p
		}
		c.SSO.IdPs = []config.IdP{samlIdP("umcx", s.umcx, true), samlIdP("kliniek", s.kliniek, false)}
		c.SSO.Onboarding = config.Onboarding{RedirectURIs: []string{onboardRedir}, CodeLifetime: codeLifetime,
			StartsPerClient: 12, Homeservers: []config.OnboardingHomeserver{{ServerName: s.hs2.ServerName,
				ClientURL: s.hs2.ClientURL, ASTokenFile: tokenFile, UserPrefix: as.UserPrefix, Localpart: scheme}}}
		if redis {
			c.Redis.URL = "redis://127.0.0.1:6379"
			c.Redis.KeyPrefix = "ozo-e2e-onboard-" + randomHex(t, 6) + ":"
		}
	}})
	if s.is.Name != name {
		t.Fatalf("identity server is %s, homeservers trust %s", s.is.Name, name)
	}
	for id, idp := range map[string]*samltest.IdP{"umcx": s.umcx, "kliniek": s.kliniek} {
		resp, err := s.is.HTTPClient(nil).Get(s.is.URL + "/_ozo/v1/sso/" + id + "/metadata")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var md crewsaml.EntityDescriptor
		if err := xml.Unmarshal(body, &md); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("SP metadata of %s: %d %v", id, resp.StatusCode, err)
		}
		idp.RegisterSP(t, "ozo-identity", &md, false)
	}
	syncDirectories(t, s.is, fhir)
	s.observer = s.hs2.Register(t, "observer")
	return s
}

// pkce is a client's PKCE pair (RFC 7636, S256).
type pkce struct{ verifier, challenge string }

func newPKCE(t *testing.T) pkce {
	v := randomHex(t, 32)
	sum := sha256.Sum256([]byte(v))
	return pkce{verifier: v, challenge: base64.RawURLEncoding.EncodeToString(sum[:])}
}

// page is an answer to the practitioner's browser.
type page struct {
	status   int
	location string
	body     string
}

// browser is the practitioner's browser: it trusts the test CA, keeps cookies and does not
// follow redirects.
func (s *onboardStack) browser() *http.Client {
	c := s.is.HTTPClient(nil)
	c.Jar, _ = cookiejar.New(nil)
	return c
}

func visit(t *testing.T, b *http.Client, method, rawURL string, form url.Values) page {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequestWithContext(t.Context(), method, rawURL, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return page{status: resp.StatusCode, location: resp.Header.Get("Location"), body: string(data)}
}

var (
	csrfField    = regexp.MustCompile(`name="csrf_token" value="([^"]*)"`)
	continueHref = regexp.MustCompile(`id="continue" class="button" href="([^"]*)"`)
)

// start begins an onboarding login through the API and returns the login page's URL.
func (s *onboardStack) start(t *testing.T, idp string, p pkce) string {
	t.Helper()
	status, resp := s.is.call(t, nil, http.MethodPost, "/_ozo/v1/onboard/sso/start", "",
		map[string]any{"idp": idp, "redirect_uri": onboardRedir, "code_challenge": p.challenge, "code_challenge_method": "S256"})
	if status != http.StatusOK {
		t.Fatalf("onboarding start at %s: %d %v", idp, status, resp)
	}
	return resp["redirect_url"].(string)
}

// login runs a started onboarding login in browser b: the login page (which names no account
// but a new one), the choice of the IdP, the IdP's form as user, the SAML POST and the page
// that completes the login. It returns what that last page answered.
func (s *onboardStack) login(t *testing.T, b *http.Client, loginURL string, idp *samltest.IdP, idpID, user string) page {
	t.Helper()
	pg := visit(t, b, http.MethodGet, loginURL, nil)
	if pg.status != http.StatusOK || !strings.Contains(pg.body, `id="newaccount"`) || strings.Contains(pg.body, `id="account"`) {
		t.Fatalf("onboarding login page: %d\n%s", pg.status, pg.body)
	}
	m := csrfField.FindStringSubmatch(pg.body)
	if m == nil {
		t.Fatalf("no CSRF token on the login page:\n%s", pg.body)
	}
	lu, _ := url.Parse(loginURL)
	pg = visit(t, b, http.MethodPost, s.is.URL+"/_ozo/web/sso/login", url.Values{"csrf_token": {m[1]},
		"login": {lu.Query().Get("login")}, "idp": {idpID}})
	l := continueHref.FindStringSubmatch(pg.body)
	if pg.status != http.StatusOK || l == nil {
		t.Fatalf("choosing %s: %d %s", idpID, pg.status, pg.body)
	}
	acs, form := idp.Login(t, idp.Client(), html.UnescapeString(l[1]), user, "wachtwoord")
	if !strings.HasPrefix(acs, s.is.URL+"/_ozo/v1/sso/"+idpID+"/acs") {
		t.Fatalf("the IdP posts to %s", acs)
	}
	pg = visit(t, b, http.MethodPost, acs, form)
	if pg.status != http.StatusSeeOther {
		t.Fatalf("SAML POST: %d %s", pg.status, pg.body)
	}
	next, err := url.Parse(acs)
	if err == nil {
		next, err = next.Parse(pg.location)
	}
	if err != nil {
		t.Fatal(err)
	}
	return visit(t, b, http.MethodGet, next.String(), nil)
}

// onboard logs user in at idp in a new browser and returns the one-time code the browser was
// sent to the client with.
func (s *onboardStack) onboard(t *testing.T, idp *samltest.IdP, idpID, user string, p pkce) string {
	t.Helper()
	pg := s.login(t, s.browser(), s.start(t, idpID, p), idp, idpID, user)
	return codeOf(t, pg)
}

func codeOf(t *testing.T, pg page) string {
	t.Helper()
	if pg.status != http.StatusSeeOther || !strings.HasPrefix(pg.location, onboardRedir+"?code=") {
		t.Fatalf("the login ends with %d to %q, want a redirect to %s with a code:\n%s", pg.status, pg.location, onboardRedir, pg.body)
	}
	u, _ := url.Parse(pg.location)
	if len(u.Query()) != 1 {
		t.Fatalf("the redirect carries more than the code: %s", pg.location)
	}
	return u.Query().Get("code")
}

// redeem trades a code for a session of the account: status and answer.
func (s *onboardStack) redeem(t *testing.T, code, verifier string) (int, map[string]any) {
	t.Helper()
	return s.is.call(t, nil, http.MethodPost, "/_ozo/v1/onboard/token", "", map[string]any{"code": code, "code_verifier": verifier})
}

// client redeems code and returns a Matrix client with the session it hands over.
func (s *onboardStack) client(t *testing.T, code string, p pkce) *mautrix.Client {
	t.Helper()
	status, resp := s.redeem(t, code, p.verifier)
	if status != http.StatusOK || resp["home_server"] != s.hs2.ServerName || resp["access_token"] == "" || resp["device_id"] == "" {
		t.Fatalf("redeem: %d %v", status, resp)
	}
	cli, err := mautrix.NewClient(s.hs2.ClientURL, id.UserID(resp["user_id"].(string)), resp["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	cli.DeviceID = id.DeviceID(resp["device_id"].(string))
	return cli
}

// lookup is the identity server's v1 answer for a 3PID: its MXID or "".
func (s *onboardStack) lookup(t *testing.T, medium, address string) string {
	t.Helper()
	status, resp := s.is.v1Lookup(t, nil, medium, address)
	if status != http.StatusOK {
		t.Fatalf("lookup %s %s: %d %v", medium, address, status, resp)
	}
	mxid, _ := resp["mxid"].(string)
	return mxid
}

// noAccount checks that hs2 has no account of either naming scheme for the practitioner with
// this UZI number and idp 3PID: hs2 knows no profile of it.
func (s *onboardStack) noAccount(t *testing.T, uzi, idp3PID string) {
	t.Helper()
	sum := sha256.Sum256([]byte(idp3PID))
	for _, local := range []string{"zv_" + uzi, "zv_" + strings.ToLower(base32.StdEncoding.EncodeToString(sum[:15]))} {
		_, err := s.observer.GetProfile(t.Context(), s.hs2.UserID(local))
		if !errors.Is(err, mautrix.MNotFound) {
			t.Fatalf("profile of %s on hs2: %v, want M_NOT_FOUND", s.hs2.UserID(local), err)
		}
	}
}

// TestOnboarding is issue 15 point 4's acceptance with real Dendrite: a practitioner new to hs2
// logs in through the SAML IdP, gets an account there and a working access token (/whoami),
// with no password ever, is invited by UZI number from hs1 and joins. Then the hostile cases.
// It runs on SQLite with accounts named by UZI number and login state in memory, and on
// PostgreSQL with accounts named by a hash of the idp 3PID and login state in Redis.
func TestOnboarding(t *testing.T) {
	for _, run := range []struct {
		engine sqlstore.Engine
		scheme string
		redis  bool
	}{{sqlstore.SQLite, "uzi", false}, {sqlstore.Postgres, "idp", true}} {
		t.Run(fmt.Sprintf("%s/%s", run.engine, run.scheme), func(t *testing.T) {
			runOnboarding(t, startOnboardStack(t, run.engine, run.scheme, run.redis))
		})
	}
}

func runOnboarding(t *testing.T, s *onboardStack) {
	ctx := t.Context()
	p := newPKCE(t)
	code := s.onboard(t, s.umcx, "umcx", "jdevries", p)
	cli := s.client(t, code, p)
	mxid := cli.UserID
	if !strings.HasPrefix(mxid.String(), "@zv_") || mxid.Homeserver() != s.hs2.ServerName {
		t.Fatalf("account %s, want one in the application service's namespace on hs2", mxid)
	}
	if s.scheme == "uzi" && mxid != s.hs2.UserID("zv_"+newUZI) {
		t.Fatalf("account %s, want it named by the UZI number", mxid)
	}
	if who, err := cli.Whoami(ctx); err != nil || who.UserID != mxid {
		t.Fatalf("whoami with the handed-over token: %+v %v", who, err)
	}
	for _, tp := range [][2]string{{"uzi", newUZI}, {"idp", "umcx:jdevries"}, {"email", "j.devries@umcx.nl"}} {
		if got := s.lookup(t, tp[0], tp[1]); got != mxid.String() {
			t.Fatalf("lookup %s %s: %q, want the new account %s", tp[0], tp[1], got, mxid)
		}
	}
	alice := s.hs1.Register(t, "alice")
	// Colleagues see the name the IdP asserted, not the generated localpart.
	if prof, err := alice.GetProfile(ctx, mxid); err != nil || prof.DisplayName != "jdevries" {
		t.Fatalf("the new account's profile seen from hs1: %+v %v", prof, err)
	}
	// The check noAccount relies on: hs2 shows the profile of an account that exists.
	if prof, err := s.observer.GetProfile(ctx, mxid); err != nil || prof.DisplayName != "jdevries" {
		t.Fatalf("the new account's profile seen on hs2: %+v %v", prof, err)
	}
	room, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Name: "Overdracht"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.InviteUserByThirdParty(ctx, room.RoomID, &mautrix.ReqInvite3PID{IDServer: s.is.Name, Medium: "uzi", Address: newUZI}); err != nil {
		t.Fatalf("invite uzi %s: %v", newUZI, err)
	}
	ev := waitInvite(t, cli, room.RoomID)
	if ev.Sender != alice.UserID || ev.Content.AsMember().ThirdPartyInvite != nil {
		t.Fatalf("invite = sender %s content %s, want a plain invite from alice", ev.Sender, ev.Content.VeryRaw)
	}
	if _, err := cli.JoinRoomByID(ctx, room.RoomID); err != nil {
		t.Fatalf("the new practitioner joins: %v", err)
	}
	SyncUntil(t, alice, syncWait, "the new practitioner joining", func(r *mautrix.RespSync) bool {
		return hasMembership(r, room.RoomID, mxid, event.MembershipJoin)
	})

	// A code whose lifetime runs out while the hostile cases below run.
	pExp := newPKCE(t)
	expired := s.onboard(t, s.umcx, "umcx", "jdevries", pExp)
	expiresAt := time.Now().Add(codeLifetime)

	t.Run("CodeReused", func(t *testing.T) {
		if st, resp := s.redeem(t, code, p.verifier); st != http.StatusForbidden || resp["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("a used code again: %d %v", st, resp)
		}
	})

	t.Run("SameAccountAgain", func(t *testing.T) {
		// The practitioner logs in again (a new phone): the same account, a new device; the old
		// session keeps working.
		p2 := newPKCE(t)
		again := s.client(t, s.onboard(t, s.umcx, "umcx", "jdevries", p2), p2)
		if again.UserID != mxid || again.DeviceID == cli.DeviceID {
			t.Fatalf("second login: %s device %s, want %s with a new device (first %s)", again.UserID, again.DeviceID, mxid, cli.DeviceID)
		}
		for _, c := range []*mautrix.Client{cli, again} {
			if who, err := c.Whoami(ctx); err != nil || who.UserID != mxid {
				t.Fatalf("whoami: %+v %v", who, err)
			}
		}
	})

	t.Run("CodeFromAnotherLogin", func(t *testing.T) {
		// A code from another login (planted in this client's redirect, or intercepted) with
		// this client's verifier: refused, and that code is spent.
		pA, pB := newPKCE(t), newPKCE(t)
		codeA := s.onboard(t, s.umcx, "umcx", "jdevries", pA)
		codeB := s.onboard(t, s.umcx, "umcx", "jdevries", pB)
		if st, resp := s.redeem(t, codeB, pA.verifier); st != http.StatusForbidden || resp["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("another login's code: %d %v", st, resp)
		}
		if st, resp := s.redeem(t, codeB, pB.verifier); st != http.StatusForbidden {
			t.Fatalf("a code after a wrong verifier: %d %v", st, resp)
		}
		if st, resp := s.redeem(t, codeA, ""); st != http.StatusBadRequest || resp["errcode"] != "M_MISSING_PARAMS" {
			t.Fatalf("no verifier: %d %v", st, resp)
		}
		// A code is no login handle either.
		b := s.browser()
		if pg := visit(t, b, http.MethodGet, s.is.URL+"/_ozo/web/sso/login?login="+url.QueryEscape("onboard-code:"+codeA), nil); pg.status != http.StatusBadRequest {
			t.Fatalf("a code as a login handle: %d %s", pg.status, pg.body)
		}
		s.client(t, codeA, pA)
		for _, forged := range []string{"", "x", strings.Repeat("A", 43), codeA + "x"} {
			if st, _ := s.redeem(t, forged, pA.verifier); st != http.StatusForbidden && st != http.StatusBadRequest {
				t.Fatalf("forged code %q: %d", forged, st)
			}
		}
	})

	t.Run("RedirectURINotAllowed", func(t *testing.T) {
		for _, ru := range []string{"https://evil.example/onboarded", onboardRedir + "/../x", onboardRedir + "?next=https://evil.example",
			strings.ToUpper(onboardRedir), "http://app.ozo.example.org/onboarded", ""} {
			st, resp := s.is.call(t, nil, http.MethodPost, "/_ozo/v1/onboard/sso/start", "",
				map[string]any{"idp": "umcx", "redirect_uri": ru, "code_challenge": newPKCE(t).challenge})
			if st != http.StatusBadRequest || (resp["errcode"] != "M_INVALID_PARAM" && resp["errcode"] != "M_MISSING_PARAMS") {
				t.Fatalf("redirect_uri %q: %d %v", ru, st, resp)
			}
		}
		for name, body := range map[string]map[string]any{
			"no challenge":     {"idp": "umcx", "redirect_uri": onboardRedir},
			"plain challenge":  {"idp": "umcx", "redirect_uri": onboardRedir, "code_challenge": "short"},
			"method plain":     {"idp": "umcx", "redirect_uri": onboardRedir, "code_challenge": newPKCE(t).challenge, "code_challenge_method": "plain"},
			"unknown idp":      {"idp": "nope", "redirect_uri": onboardRedir, "code_challenge": newPKCE(t).challenge},
			"not json object":  nil,
			"challenge number": {"redirect_uri": onboardRedir, "code_challenge": 5},
		} {
			if st, resp := s.is.call(t, nil, http.MethodPost, "/_ozo/v1/onboard/sso/start", "", body); st != http.StatusBadRequest {
				t.Fatalf("%s: %d %v", name, st, resp)
			}
		}
	})

	t.Run("PlacedOnHomeserverWithoutASToken", func(t *testing.T) {
		// The directory places this practitioner on hs1, where ozo-identity holds no as_token:
		// no account on hs2, nothing bound; the directory's answer stands.
		pg := s.login(t, s.browser(), s.start(t, "umcx", newPKCE(t)), s.umcx, "umcx", "vandenberg")
		if pg.status != http.StatusBadRequest || pg.location != "" || !strings.Contains(pg.body, "andere Matrix-server") {
			t.Fatalf("placed on hs1: %d %q\n%s", pg.status, pg.location, pg.body)
		}
		if got := s.lookup(t, "uzi", hs1UZI); got != s.hs1.UserID("m.vandenberg").String() {
			t.Fatalf("uzi %s now resolves to %q", hs1UZI, got)
		}
		if got := s.lookup(t, "idp", "umcx:vandenberg"); got != "" {
			t.Fatalf("idp bound to %s", got)
		}
		s.noAccount(t, hs1UZI, "umcx:vandenberg")
	})

	t.Run("AccountElsewhere", func(t *testing.T) {
		// Eva Mulder's care provider publishes her own account on hs2: she gets no second one.
		pg := s.login(t, s.browser(), s.start(t, "umcx", newPKCE(t)), s.umcx, "umcx", "mulder")
		own := s.hs2.UserID(mulderLocal).String()
		if pg.status != http.StatusConflict || pg.location != "" || !strings.Contains(pg.body, own) {
			t.Fatalf("a practitioner with an account: %d %q\n%s", pg.status, pg.location, pg.body)
		}
		if got := s.lookup(t, "uzi", mulderUZI); got != own {
			t.Fatalf("uzi %s now resolves to %q", mulderUZI, got)
		}
		if got := s.lookup(t, "idp", "umcx:mulder"); got != "" {
			t.Fatalf("idp bound to %s", got)
		}
		s.noAccount(t, mulderUZI, "umcx:mulder")
	})

	t.Run("DirectoryNamesOurAccount", func(t *testing.T) {
		// A care provider's directory names the new practitioner's account for another UZI
		// number: whoever proves that number must not be signed in to it.
		res := []string{
			fmt.Sprintf(`{"resourceType":"Endpoint","id":"ep-spoof","status":"active","connectionType":{"code":"matrix"},
				"payloadType":[{"coding":[{"code":"matrix-messaging"}]}],"address":"matrix:u/%s"}`, strings.TrimPrefix(mxid.String(), "@")),
			fmt.Sprintf(`{"resourceType":"Practitioner","id":"p-spoof","active":true,
				"identifier":[{"system":"http://fhir.nl/fhir/NamingSystem/uzi-nr-pers","value":%q}],"name":[{"text":"K. Janssen"}]}`, spoofedUZI),
			`{"resourceType":"PractitionerRole","id":"r-spoof","active":true,"practitioner":{"reference":"Practitioner/p-spoof"},
				"organization":{"reference":"Organization/hp-de-linde"},"endpoint":[{"reference":"Endpoint/ep-spoof"}]}`,
		}
		for _, r := range res {
			if _, err := s.fhir.Directory(delindeDir).Put([]byte(r)); err != nil {
				t.Fatal(err)
			}
		}
		syncDirectories(t, s.is, s.fhir)
		if got := s.lookup(t, "uzi", spoofedUZI); got != mxid.String() {
			t.Fatalf("the directory's entry: %q", got)
		}
		pg := s.login(t, s.browser(), s.start(t, "umcx", newPKCE(t)), s.umcx, "umcx", "janssen")
		if pg.status != http.StatusConflict || pg.location != "" {
			t.Fatalf("a login whose UZI number the directory gives an account of ours: %d %q\n%s", pg.status, pg.location, pg.body)
		}
		if got := s.lookup(t, "uzi", newUZI); got != mxid.String() {
			t.Fatalf("uzi %s now resolves to %q", newUZI, got)
		}
		if got := s.lookup(t, "idp", "umcx:janssen"); got != "" {
			t.Fatalf("idp bound to %s", got)
		}
	})

	t.Run("UZINotTrustedFromThisIdP", func(t *testing.T) {
		// kliniek asserts the hospital practitioner's number: it neither chooses the homeserver
		// (the directory would have refused hs2) nor is bound; by UZI number there is no account.
		pg := s.login(t, s.browser(), s.start(t, "kliniek", newPKCE(t)), s.kliniek, "kliniek", "mallory")
		switch s.scheme {
		case "uzi":
			if pg.status != http.StatusBadRequest || pg.location != "" || !strings.Contains(pg.body, "UZI-nummer") {
				t.Fatalf("untrusted UZI number, accounts by UZI number: %d %q\n%s", pg.status, pg.location, pg.body)
			}
			if got := s.lookup(t, "idp", "kliniek:mallory"); got != "" {
				t.Fatalf("idp bound to %s", got)
			}
		default:
			codeOf(t, pg) // an account by her idp login, on the IdP's homeserver
			got := s.lookup(t, "idp", "kliniek:mallory")
			if !strings.HasPrefix(got, "@zv_") || !strings.HasSuffix(got, ":"+s.hs2.ServerName) {
				t.Fatalf("idp kliniek:mallory: %q", got)
			}
		}
		if got := s.lookup(t, "uzi", hs1UZI); got != s.hs1.UserID("m.vandenberg").String() {
			t.Fatalf("uzi %s resolves to %q after an untrusted IdP asserted it", hs1UZI, got)
		}
		if s.scheme == "uzi" {
			s.noAccount(t, hs1UZI, "kliniek:mallory")
		} else {
			s.noAccount(t, hs1UZI, "umcx:vandenberg")
		}
	})

	t.Run("StartsThrottledPerClient", func(t *testing.T) {
		// Another client address has its own budget of starts_per_client (12) a minute.
		for i := range 13 {
			st, resp := s.is.call(t, outsider, http.MethodPost, "/_ozo/v1/onboard/sso/start", "",
				map[string]any{"redirect_uri": onboardRedir, "code_challenge": newPKCE(t).challenge})
			want := http.StatusOK
			if i == 12 {
				want = http.StatusTooManyRequests
			}
			if st != want {
				t.Fatalf("start %d: %d %v, want %d", i+1, st, resp, want)
			}
		}
	})

	t.Run("CodeExpired", func(t *testing.T) {
		time.Sleep(time.Until(expiresAt) + time.Second)
		if st, resp := s.redeem(t, expired, pExp.verifier); st != http.StatusForbidden || resp["errcode"] != "M_FORBIDDEN" {
			t.Fatalf("an expired code: %d %v", st, resp)
		}
	})

	t.Run("AuditRecords", func(t *testing.T) {
		// Each onboarding login is recorded on behalf of the account, each binding it made too.
		recs, err := s.is.App.Store.ListAudit(ctx, time.Time{}, 0, 1_000_000)
		if err != nil {
			t.Fatal(err)
		}
		var created, existing, binds int
		for _, r := range recs {
			switch {
			case r.Action == audit.ActionLogin && r.OnBehalfOf == mxid.String() && strings.Contains(r.Detail, "onboarding=created"):
				created++
			case r.Action == audit.ActionLogin && r.OnBehalfOf == mxid.String() && strings.Contains(r.Detail, "onboarding=existing"):
				existing++
			case r.Action == audit.ActionBind && r.Resource == mxid.String() && strings.Contains(r.Detail, "source=sso"):
				binds++
			}
		}
		if created != 1 || existing < 4 || binds < 3 {
			t.Fatalf("audit: %d logins that created the account, %d into it again, %d bindings", created, existing, binds)
		}
		if _, err := s.is.App.VerifyAudit(ctx, nil); err != nil {
			t.Fatal(err)
		}
	})
}
