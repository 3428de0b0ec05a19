package api_test

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/ozo-platform/ozo-identity/api/apitest"
	"github.com/ozo-platform/ozo-identity/audit"
	"github.com/ozo-platform/ozo-identity/config"
	"github.com/ozo-platform/ozo-identity/storage/sqlstore"
)

// A test BSN (passes the 11-test); it must never reach the database or the log.
const testBSN = "999911120"

func relatedPerson(id, email, given, family string, extra string) string {
	return fmt.Sprintf(`{
  "resourceType": "RelatedPerson",
  "id": %q,
  "active": true,
  "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": %q}],
  "patient": {"reference": "Patient/p-77"},
  "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "DAU"}]}],
  "name": [{"use": "official", "family": %q, "given": [%q]}],
  "telecom": [{"system": "phone", "value": "+31612345678"}, {"system": "email", "value": %q, "use": "home"}]%s
}`, id, testBSN, family, given, email, extra)
}

var accountLinkRE = regexp.MustCompile(`https://[^\s"'<>]+/_ozo/web/account/(activate|reset)\?token=([A-Za-z0-9_%-]+)`)

func mailedAccountToken(t *testing.T, h *apitest.Harness, rcpt string, n int, kind string) string {
	t.Helper()
	msg := h.Mail.Wait(t, rcpt, n, 10*time.Second)
	m := accountLinkRE.FindStringSubmatch(msg.Text)
	if m == nil || m[1] != kind {
		t.Fatalf("no %s link in mail %d to %s:\n%s", kind, n, rcpt, msg.Text)
	}
	tok, _ := url.QueryUnescape(m[2])
	return tok
}

// dumpDB renders every row of every table as text, for checks that a value is stored nowhere.
func dumpDB(t *testing.T, db *sqlstore.DB) string {
	t.Helper()
	q := `SELECT name FROM sqlite_master WHERE type = 'table'`
	if db.Engine == sqlstore.Postgres {
		q = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`
	}
	rows, err := db.QueryContext(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	if len(tables) < 10 {
		t.Fatalf("only %d tables found: %v", len(tables), tables)
	}
	var b strings.Builder
	for _, table := range tables {
		rows, err := db.QueryContext(t.Context(), `SELECT * FROM `+table)
		if err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s:", table)
			for _, v := range vals {
				if bs, ok := v.([]byte); ok {
					v = string(bs)
				}
				fmt.Fprintf(&b, " %v", v)
			}
			b.WriteString("\n")
		}
		rows.Close()
	}
	return b.String()
}

// TestFHIRProvisioningKeepsNoBSN provisions a caregiver from a RelatedPerson carrying a BSN:
// the account is made from its email and name and the invitation is mailed, but the BSN is in
// no table and no log line; an update of the same resource changes the account in place.
func TestFHIRProvisioningKeepsNoBSN(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		h := apitest.New(t, engine)
		const path = "/_ozo/admin/v1/fhir/RelatedPerson"
		// Without the admin token: refused, nothing made.
		h.Post(t, path, "", relatedPerson("rp-1", "els@example.nl", "Els", "de Vries", "")).Want(t, http.StatusUnauthorized, "M_UNAUTHORIZED")
		resp := h.Post(t, path, apitest.AdminToken, relatedPerson("rp-1", "els@example.nl", "Els", "de Vries", "")).Want(t, http.StatusCreated, "")
		acct := resp.JSON(t)["account"].(map[string]any)
		if acct["email"] != "els@example.nl" || acct["display_name"] != "Els de Vries" || acct["fhir_reference"] != "RelatedPerson/rp-1" ||
			acct["status"] != "invited" || acct["kind"] != "related_person" {
			t.Fatalf("account: %v", acct)
		}
		msg := h.Mail.Wait(t, "els@example.nl", 1, 10*time.Second)
		if !strings.Contains(msg.Subject, "Activeer") || strings.Contains(msg.Text, testBSN) {
			t.Fatalf("invitation: %q\n%s", msg.Subject, msg.Text)
		}
		// The same resource again, renamed: updated, not duplicated, no second invitation.
		resp = h.Post(t, path, apitest.AdminToken, relatedPerson("rp-1", "els@example.nl", "Els", "Jansen", "")).Want(t, http.StatusOK, "")
		if a := resp.JSON(t)["account"].(map[string]any); a["id"] != acct["id"] || a["display_name"] != "Els Jansen" {
			t.Fatalf("update: %v", a)
		}
		// Strict parsing: an unknown element is refused, and the error does not echo the resource.
		bad := h.Post(t, path, apitest.AdminToken, relatedPerson("rp-2", "jan@example.nl", "Jan", "Smit", `, "bsn": "`+testBSN+`"`)).
			Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		if strings.Contains(string(bad.Body), testBSN) {
			t.Fatalf("error echoes the BSN: %s", bad.Body)
		}
		h.Post(t, path, apitest.AdminToken, `{"resourceType": "Patient", "id": "x", "telecom": [{"system": "email", "value": "a@b.nl"}]}`).
			Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		h.Post(t, path, apitest.AdminToken, strings.Replace(relatedPerson("rp-3", "x@example.nl", "X", "Y", ""), `{"system": "email", "value": "x@example.nl", "use": "home"}`, `{"system": "phone", "value": "1"}`, 1)).
			Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		// A patient too.
		patient := `{"resourceType": "Patient", "id": "p-77", "identifier": [{"system": "http://fhir.nl/fhir/NamingSystem/bsn", "value": "` + testBSN + `"}],
			"name": [{"text": "Piet Pieters"}], "telecom": [{"system": "email", "value": "piet@example.nl"}],
			"communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}, "preferred": true}]}`
		p := h.Post(t, "/_ozo/admin/v1/fhir/Patient", apitest.AdminToken, patient).Want(t, http.StatusCreated, "").JSON(t)["account"].(map[string]any)
		if p["kind"] != "patient" || p["fhir_reference"] != "Patient/p-77" || p["language"] != "en" || p["display_name"] != "Piet Pieters" {
			t.Fatalf("patient: %v", p)
		}
		if m := h.Mail.Wait(t, "piet@example.nl", 1, 10*time.Second); m.Subject != "Activate your OZO account" {
			t.Fatalf("patient invitation in English expected: %q", m.Subject)
		}
		// active: false disables the account.
		off := h.Post(t, path, apitest.AdminToken, strings.Replace(relatedPerson("rp-1", "els@example.nl", "Els", "Jansen", ""), `"active": true`, `"active": false`, 1)).
			Want(t, http.StatusOK, "").JSON(t)["account"].(map[string]any)
		if off["status"] != "disabled" {
			t.Fatalf("inactive resource: %v", off)
		}

		if dump := dumpDB(t, h.App.DB); strings.Contains(dump, testBSN) {
			t.Fatalf("the BSN is stored:\n%s", dump)
		} else if !strings.Contains(dump, "RelatedPerson/rp-1") || !strings.Contains(dump, "piet@example.nl") {
			t.Fatalf("the dump misses the accounts, so it proves nothing:\n%s", dump)
		}
		if logs := h.Logs(); strings.Contains(logs, testBSN) {
			t.Fatalf("the BSN is logged:\n%s", logs)
		} else if !strings.Contains(logs, "kind=account_invite") {
			t.Fatalf("the log misses the provisioning, so it proves nothing:\n%s", logs)
		}
		// The audit trail has the provisioning, update and disable under the people's FHIR
		// references (the dump above covered its table), and its FHIR export has no BSN either.
		var events []string
		for _, r := range auditRecords(t, h) {
			if strings.HasPrefix(string(r.Action), "account.") {
				events = append(events, string(r.Action)+" "+r.Subject)
			}
		}
		if got := strings.Join(events, ","); !strings.Contains(got, "account.create RelatedPerson/rp-1,account.credentials RelatedPerson/rp-1,account.update RelatedPerson/rp-1") ||
			!strings.Contains(got, "account.create Patient/p-77") || !strings.HasSuffix(got, "account.update RelatedPerson/rp-1,account.update RelatedPerson/rp-1") {
			t.Fatalf("account records: %s", got)
		}
		export := adminCall(t, h, http.MethodGet, "/_ozo/admin/v1/audit?_format=fhir&limit=1000", apitest.AdminToken, nil).Want(t, http.StatusOK, "")
		if strings.Contains(string(export.Body), testBSN) || strings.Contains(string(export.Body), "els@example.nl") {
			t.Fatalf("the FHIR export carries the BSN or an email:\n%s", export.Body)
		} else if !strings.Contains(string(export.Body), `"reference":"Patient/p-77"`) {
			t.Fatalf("the FHIR export misses the patient, so it proves nothing:\n%s", export.Body)
		}
	})
}

// TestAccountAPIFlow: an admin creates an account, the person activates it (password, TOTP,
// first code, recovery codes) and logs in with both factors through the JSON API; the admin
// lists, shows, disables, enables, resets the second factor and deletes it.
func TestAccountAPIFlow(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		h := apitest.New(t, engine)
		const A = "/_ozo/admin/v1/accounts"
		const P = "/_ozo/v1/accounts"
		h.Post(t, A, apitest.AdminToken, map[string]any{"email": "not an email", "kind": "related_person"}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		h.Post(t, A, apitest.AdminToken, map[string]any{"email": "a@example.nl", "kind": "uncle"}).Want(t, http.StatusBadRequest, "M_INVALID_PARAM")
		acct := h.Post(t, A, apitest.AdminToken, map[string]any{"email": "Ann@Example.nl", "display_name": "Ann", "kind": "related_person",
			"fhir_reference": "RelatedPerson/ann", "language": "en"}).Want(t, http.StatusCreated, "").JSON(t)["account"].(map[string]any)
		id := acct["id"].(string)
		h.Post(t, A, apitest.AdminToken, map[string]any{"email": "ann@example.nl", "kind": "patient"}).Want(t, http.StatusBadRequest, "M_THREEPID_IN_USE")
		tok := mailedAccountToken(t, h, "ann@example.nl", 1, "activate")

		h.Post(t, P+"/activate", "", map[string]any{"token": tok, "password": "short"}).Want(t, http.StatusBadRequest, "M_WEAK_PASSWORD")
		const pw = "a long enough passphrase"
		enrol := h.Post(t, P+"/activate", "", map[string]any{"token": tok, "password": pw}).Want(t, http.StatusOK, "").JSON(t)
		secret := enrol["totp_secret"].(string)
		if enrol["qr_png"] == "" || !strings.HasPrefix(enrol["otpauth_url"].(string), "otpauth://totp/") {
			t.Fatalf("enrolment: %v", enrol)
		}
		h.Post(t, P+"/activate/confirm", "", map[string]any{"token": tok, "code": "000000"}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		now := time.Now()
		first, _ := totp.GenerateCode(secret, now)
		done := h.Post(t, P+"/activate/confirm", "", map[string]any{"token": tok, "code": first}).Want(t, http.StatusOK, "").JSON(t)
		codes := done["recovery_codes"].([]any)
		if len(codes) != 10 {
			t.Fatalf("recovery codes: %v", done)
		}
		// The activation link is used up.
		h.Post(t, P+"/activate", "", map[string]any{"token": tok, "password": pw}).Want(t, http.StatusForbidden, "M_FORBIDDEN")

		h.Post(t, P+"/login", "", map[string]any{"email": "ann@example.nl", "password": "wrong password here"}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		ticket := h.Post(t, P+"/login", "", map[string]any{"email": "ann@example.nl", "password": pw}).Want(t, http.StatusOK, "").Str(t, "ticket")
		// The code that confirmed the enrolment is spent.
		h.Post(t, P+"/login/second_factor", "", map[string]any{"ticket": ticket, "code": first}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		// The next step's code is accepted (one step of clock skew), once.
		next, _ := totp.GenerateCode(secret, now.Add(30*time.Second))
		h.Post(t, P+"/login/second_factor", "", map[string]any{"ticket": ticket, "code": next}).Want(t, http.StatusOK, "")
		ticket = h.Post(t, P+"/login", "", map[string]any{"email": "ann@example.nl", "password": pw}).Want(t, http.StatusOK, "").Str(t, "ticket")
		h.Post(t, P+"/login/second_factor", "", map[string]any{"ticket": ticket, "code": next}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		h.Post(t, P+"/login/second_factor", "", map[string]any{"ticket": ticket, "recovery_code": codes[0]}).Want(t, http.StatusOK, "")
		ticket = h.Post(t, P+"/login", "", map[string]any{"email": "ann@example.nl", "password": pw}).Want(t, http.StatusOK, "").Str(t, "ticket")
		h.Post(t, P+"/login/second_factor", "", map[string]any{"ticket": ticket, "recovery_code": codes[0]}).Want(t, http.StatusForbidden, "M_FORBIDDEN")

		show := h.Get(t, A+"/"+id, apitest.AdminToken).Want(t, http.StatusOK, "").JSON(t)["account"].(map[string]any)
		if show["status"] != "active" || show["totp_enrolled"] != true || show["recovery_codes_left"] != float64(9) {
			t.Fatalf("show: %v", show)
		}
		for _, k := range []string{"password_hash", "totp_secret"} {
			if _, ok := show[k]; ok {
				t.Fatalf("admin API shows %s", k)
			}
		}
		if list := h.Get(t, A, apitest.AdminToken).Want(t, http.StatusOK, "").JSON(t)["accounts"].([]any); len(list) != 1 {
			t.Fatalf("list: %v", list)
		}
		h.Post(t, A+"/"+id+"/disable", apitest.AdminToken, map[string]any{}).Want(t, http.StatusOK, "")
		h.Post(t, P+"/login", "", map[string]any{"email": "ann@example.nl", "password": pw}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		h.Post(t, A+"/"+id+"/enable", apitest.AdminToken, map[string]any{}).Want(t, http.StatusOK, "")
		h.Post(t, P+"/login", "", map[string]any{"email": "ann@example.nl", "password": pw}).Want(t, http.StatusOK, "")
		h.Post(t, A+"/"+id+"/reset-2fa", apitest.AdminToken, map[string]any{}).Want(t, http.StatusOK, "")
		mailedAccountToken(t, h, "ann@example.nl", 2, "activate")
		h.Post(t, P+"/login", "", map[string]any{"email": "ann@example.nl", "password": pw}).Want(t, http.StatusForbidden, "M_FORBIDDEN")

		// Password reset: the same answer for unknown emails; the link works once.
		h.Post(t, P+"/password/request_reset", "", map[string]any{"email": "nobody@example.nl"}).Want(t, http.StatusOK, "")
		h.Post(t, A+"/"+id+"/delete", apitest.AdminToken, nil).Want(t, http.StatusNotFound, "M_UNRECOGNIZED")
		h.Do(t, apitest.Request{Method: http.MethodDelete, Path: A + "/" + id, Token: apitest.AdminToken}).Want(t, http.StatusOK, "")
		h.Get(t, A+"/"+id, apitest.AdminToken).Want(t, http.StatusNotFound, "M_NOT_FOUND")
		if dump := dumpDB(t, h.App.DB); strings.Contains(dump, "ann@example.nl") {
			t.Fatalf("the deleted account's email is still stored:\n%s", dump)
		}
		// Every admin call is in the audit trail: reads as calls with the account ID as target,
		// changes as the account's own records.
		trail := h.Get(t, "/_ozo/admin/v1/audit?limit=1000", apitest.AdminToken).Want(t, http.StatusOK, "")
		if !strings.Contains(string(trail.Body), "target=ozo_account:"+id) || !strings.Contains(string(trail.Body), `"resource":"ozo_account/`+id+`"`) {
			t.Fatalf("audit log: %s", trail.Body)
		}
	})
}

// TestAccountResetAndLockoutAPI: a reset link works once; wrong passwords lock the email out
// with 429 and Retry-After, for an unknown email exactly as for a known one.
func TestAccountResetAndLockoutAPI(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		h := apitest.New(t, engine)
		const P = "/_ozo/v1/accounts"
		id := h.Post(t, "/_ozo/admin/v1/accounts", apitest.AdminToken, map[string]any{"email": "bo@example.nl", "kind": "patient",
			"fhir_reference": "Patient/bo"}).Want(t, http.StatusCreated, "").JSON(t)["account"].(map[string]any)["id"].(string)
		tok := mailedAccountToken(t, h, "bo@example.nl", 1, "activate")
		const pw = "a long enough passphrase"
		secret := h.Post(t, P+"/activate", "", map[string]any{"token": tok, "password": pw}).Want(t, http.StatusOK, "").Str(t, "totp_secret")
		code, _ := totp.GenerateCode(secret, time.Now())
		h.Post(t, P+"/activate/confirm", "", map[string]any{"token": tok, "code": code}).Want(t, http.StatusOK, "")

		h.Post(t, P+"/password/request_reset", "", map[string]any{"email": "bo@example.nl"}).Want(t, http.StatusOK, "")
		reset := mailedAccountToken(t, h, "bo@example.nl", 2, "reset")
		const pw2 = "another long passphrase"
		h.Do(t, apitest.Request{Method: http.MethodPost, Path: P + "/password/reset", Body: map[string]any{"token": reset, "password": pw2},
			Header: http.Header{"X-Request-Id": {"reset-by-bo"}}}).Want(t, http.StatusOK, "")
		h.Post(t, P+"/password/reset", "", map[string]any{"token": reset, "password": "a third passphrase!"}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
		h.Post(t, P+"/login", "", map[string]any{"email": "bo@example.nl", "password": pw2}).Want(t, http.StatusOK, "")

		for _, addr := range []string{"bo@example.nl", "nobody@example.nl"} {
			for i := range 5 {
				h.Post(t, P+"/login", "", map[string]any{"email": addr, "password": fmt.Sprintf("wrong password %d", i)}).Want(t, http.StatusForbidden, "M_FORBIDDEN")
			}
			locked := h.Post(t, P+"/login", "", map[string]any{"email": addr, "password": pw2}).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
			if locked.Header.Get("Retry-After") == "" {
				t.Fatalf("%s: no Retry-After", addr)
			}
		}
		// Locked out of login: the right password, right now, still fails.
		h.Post(t, P+"/login", "", map[string]any{"email": "bo@example.nl", "password": pw2}).Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")

		// The audit trail: the reset by its holder from this client with its request ID; the
		// reused link refused; 13 refused logins in at most a few counted records, and one
		// lockout record for the account (none for an address without one).
		h.App.Lookups.Flush(t.Context())
		var resetDone, reused, lockouts int
		var failures []audit.Record
		var refusedLogins int64
		for _, r := range auditRecords(t, h) {
			switch {
			case r.Action == audit.ActionAccountCredentials && r.Detail == "password reset with a mailed link":
				resetDone++
				if r.Actor != (audit.Agent{Kind: audit.AgentAccount, ID: id}) || r.Source != "127.0.0.1" || r.RequestID != "reset-by-bo" ||
					r.Resource != "ozo_account/"+id || r.Subject != "Patient/bo" {
					t.Errorf("reset record %+v", r)
				}
			case r.Action == audit.ActionAccountCredentials && r.Outcome == audit.OutcomeRefused:
				reused++
			case r.Action == audit.ActionLoginFailure && strings.HasPrefix(r.Detail, "locked out until"):
				lockouts++
				if r.Resource != "ozo_account/"+id || !strings.Contains(r.Detail, "after 5 failed attempts") {
					t.Errorf("lockout record %+v", r)
				}
			case r.Action == audit.ActionLoginFailure:
				failures = append(failures, r)
				refusedLogins += r.Count
			}
		}
		if resetDone != 1 || reused != 1 || lockouts != 1 || refusedLogins != 13 || len(failures) > 3 {
			t.Fatalf("reset %d, reused link %d, lockouts %d, refused logins %d in %d records %+v", resetDone, reused, lockouts, refusedLogins, len(failures), failures)
		}
	})
}

// TestAccountLoginsLimitedPerClient: one client trying passwords on many emails (each below its
// lockout) is stopped by the per-client budget, on the JSON API and on the login page alike.
func TestAccountLoginsLimitedPerClient(t *testing.T) {
	apitest.ForEachEngine(t, func(t *testing.T, engine sqlstore.Engine) {
		h := apitest.New(t, engine, func(c *config.Config) { c.RateLimits.PerClient = 3 })
		for i := range 3 {
			h.Post(t, "/_ozo/v1/accounts/login", "", map[string]any{"email": fmt.Sprintf("p%d@example.nl", i), "password": "Summer2026!!"}).
				Want(t, http.StatusForbidden, "M_FORBIDDEN")
		}
		h.Post(t, "/_ozo/v1/accounts/login", "", map[string]any{"email": "p9@example.nl", "password": "Summer2026!!"}).
			Want(t, http.StatusTooManyRequests, "M_LIMIT_EXCEEDED")
		form := url.Values{"email": {"q@example.nl"}, "password": {"Summer2026!!"}}
		var last *apitest.Response
		for range 4 {
			last = h.Do(t, apitest.Request{Method: http.MethodPost, Path: "/_ozo/web/account/login", Body: form})
		}
		if last.Status != http.StatusTooManyRequests || !strings.Contains(last.Header.Get("Content-Type"), "text/html") ||
			last.Header.Get("Retry-After") == "" {
			t.Fatalf("4th page login: HTTP %d %s", last.Status, last.Header.Get("Content-Type"))
		}
	})
}
