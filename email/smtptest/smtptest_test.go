package smtptest

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/smtp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

const link = "https://id.test/_matrix/identity/v2/validate/email/submitToken?token=abc&sid=1"

// testMail is multipart/alternative with a quoted-printable text part (a soft break inside
// the link) and a base64 HTML part, as mail clients and Sydent templates write them.
func testMail() string {
	htmlPart := base64.StdEncoding.EncodeToString([]byte(`<a href="` + strings.ReplaceAll(link, "&", "&amp;") + `">Bevestig</a>`))
	return "From: OZO <noreply@ozo.test>\r\n" +
		"To: Bob@Example.org\r\n" +
		"Subject: =?utf-8?q?Bevestig_uw_e-mailadres_=C3=BC?=\r\n" +
		"X-Long: one\r\n two\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/alternative; boundary=\"b1\"\r\n" +
		"\r\n" +
		"--b1\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: quoted-printable\r\n" +
		"\r\n" +
		"Open https://id.test/_matrix/identity/v2/validate/email/submitToken?token=3D=\r\nabc&sid=3D1 now.\r\n" +
		"--b1\r\n" +
		"Content-Type: text/html; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"\r\n" +
		htmlPart[:20] + "\r\n" + htmlPart[20:] + "\r\n" +
		"--b1--\r\n"
}

type dial struct {
	security string
	tls      *tls.Config
	user     string
	pass     string
}

// send delivers msg over a real SMTP connection the way the mailer does.
func send(t *testing.T, s *Server, d dial, from string, to []string, msg string) error {
	t.Helper()
	addr := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	var c *smtp.Client
	var err error
	if d.security == "tls" {
		conn, err := tls.Dial("tcp", addr, d.tls)
		if err != nil {
			return err
		}
		c, err = smtp.NewClient(conn, s.Host)
		if err != nil {
			conn.Close()
			return err
		}
	} else if c, err = smtp.Dial(addr); err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return err
	}
	if d.security == "starttls" {
		if ok, _ := c.Extension("AUTH"); ok {
			return fmt.Errorf("AUTH offered before STARTTLS")
		}
		cfg := d.tls.Clone()
		cfg.ServerName = s.Host
		if err := c.StartTLS(cfg); err != nil {
			return err
		}
	}
	if d.user != "" {
		if err := c.Auth(smtp.PlainAuth("", d.user, d.pass, s.Host)); err != nil {
			return err
		}
	}
	if err := c.Mail(from); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func TestPlainMessageTakenApart(t *testing.T) {
	s := Start(t)
	if err := send(t, s, dial{}, "bounce@ozo.test", []string{"Bob@Example.org"}, testMail()); err != nil {
		t.Fatal(err)
	}
	msgs := s.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	m := msgs[0]
	if m.Err != nil {
		t.Fatal(m.Err)
	}
	if m.From != "bounce@ozo.test" || !slices.Equal(m.To, []string{"Bob@Example.org"}) || m.TLS || m.User != "" {
		t.Errorf("envelope %q %q TLS %v user %q", m.From, m.To, m.TLS, m.User)
	}
	if string(m.Raw) != testMail() {
		t.Errorf("Raw differs from what was sent:\n%s", m.Raw)
	}
	if want := []string{"From", "To", "Subject", "X-Long", "MIME-Version", "Content-Type"}; !slices.Equal(m.HeaderNames, want) {
		t.Errorf("HeaderNames %q, want %q", m.HeaderNames, want)
	}
	if m.Subject != "Bevestig uw e-mailadres ü" || m.Header.Get("To") != "Bob@Example.org" {
		t.Errorf("Subject %q To %q", m.Subject, m.Header.Get("To"))
	}
	if m.Text != "Open "+link+" now." {
		t.Errorf("Text %q", m.Text)
	}
	if !strings.Contains(m.HTML, `href="https://id.test/_matrix/identity/v2/validate/email/submitToken?token=abc&amp;sid=1"`) {
		t.Errorf("HTML %q", m.HTML)
	}
	if got := m.ValidationLink(); got != link {
		t.Errorf("ValidationLink %q, want %q", got, link)
	}
	if got := (Message{HTML: m.HTML}).ValidationLink(); got != "" {
		t.Errorf("ValidationLink %q from the HTML part, want only the text part's", got)
	}
	if got := (Message{Text: "see https://evil.test/submitToken?token=x"}).ValidationLink(); got != "" {
		t.Errorf("ValidationLink took %q, which is no validation link", got)
	}
}

func TestWait(t *testing.T) {
	s := Start(t)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		time.Sleep(100 * time.Millisecond)
		for i := range 2 {
			msg := strings.Replace(testMail(), "Subject: =?utf-8?q?Bevestig_uw_e-mailadres_=C3=BC?=", "Subject: mail "+strconv.Itoa(i+1), 1)
			if err := send(t, s, dial{}, "a@ozo.test", []string{"other@example.org", "bob@example.org"}, msg); err != nil {
				t.Error(err)
			}
		}
	}()
	defer func() { <-sent }()
	// Several waiters are all woken; recipients compare case-insensitively.
	other := &fatalTB{TB: t}
	otherDone := make(chan string, 1)
	go func() {
		defer close(otherDone)
		otherDone <- s.Wait(other, "OTHER@example.org", 1, 5*time.Second).Subject
	}()
	if got := s.Wait(t, "BOB@example.org", 2, 5*time.Second).Subject; got != "mail 2" {
		t.Errorf("second mail to bob: %q", got)
	}
	if got := <-otherDone; got != "mail 1" || other.msg != "" {
		t.Errorf("first mail to other: %q %s", got, other.msg)
	}
	if n := len(s.To("nobody@example.org")); n != 0 {
		t.Errorf("To(nobody) = %d messages", n)
	}
}

// fatalTB records Fatalf and ends the goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestWaitTimesOut(t *testing.T) {
	s := Start(t)
	if err := send(t, s, dial{}, "a@ozo.test", []string{"bob@example.org"}, "Subject: no end of header"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{2, 0} {
		f := &fatalTB{TB: t}
		done := make(chan struct{})
		start := time.Now()
		go func() {
			defer close(done)
			s.Wait(f, "bob@example.org", n, 300*time.Millisecond)
		}()
		<-done
		if f.msg == "" {
			t.Fatalf("Wait for #%d did not fail", n)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("Wait took %v", d)
		}
		if n == 2 && !strings.Contains(f.msg, "no end of header") {
			t.Errorf("timeout message does not show the undecodable mail: %s", f.msg)
		}
	}
}

func TestSecurityModes(t *testing.T) {
	ca := pkitest.NewCA(t)
	for _, mode := range []string{"none", "starttls", "tls"} {
		t.Run(mode, func(t *testing.T) {
			s := StartWith(t, Options{Security: mode, TLS: ca.ServerTLSConfig(t), Username: "mailer", Password: "s3cret"})
			d := dial{security: mode, tls: ca.ClientTLSConfig()}
			if err := send(t, s, d, "a@ozo.test", []string{"bob@example.org"}, testMail()); err == nil || !strings.Contains(err.Error(), "authenticate") {
				t.Errorf("MAIL without AUTH: err = %v, want a refusal", err)
			}
			d.user, d.pass = "mailer", "wrong"
			if err := send(t, s, d, "a@ozo.test", []string{"bob@example.org"}, testMail()); err == nil {
				t.Error("wrong password accepted")
			}
			d.pass = "s3cret"
			if err := send(t, s, d, "a@ozo.test", []string{"bob@example.org"}, testMail()); err != nil {
				t.Fatal(err)
			}
			msgs := s.Messages()
			if len(msgs) != 1 {
				t.Fatalf("%d messages, want 1", len(msgs))
			}
			if msgs[0].TLS != (mode != "none") || msgs[0].User != "mailer" {
				t.Errorf("TLS %v user %q", msgs[0].TLS, msgs[0].User)
			}
		})
	}
	t.Run("untrusted certificate", func(t *testing.T) {
		s := StartWith(t, Options{Security: "tls", TLS: ca.ServerTLSConfig(t)})
		err := send(t, s, dial{security: "tls", tls: pkitest.NewCA(t).ClientTLSConfig()}, "a@ozo.test", []string{"bob@example.org"}, testMail())
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("err = %v, want a certificate error", err)
		}
	})
}

func TestRejectRecipients(t *testing.T) {
	s := StartWith(t, Options{RejectRecipients: true})
	err := send(t, s, dial{}, "a@ozo.test", []string{"bob@example.org"}, testMail())
	if err == nil || !strings.Contains(err.Error(), "550") {
		t.Fatalf("err = %v, want 550", err)
	}
	if n := len(s.Messages()); n != 0 {
		t.Fatalf("%d messages kept", n)
	}
}

func TestParseHostile(t *testing.T) {
	for name, tc := range map[string]struct{ raw, err string }{
		"no end of header": {"Subject: x\r\nbody", "no end of header"},
		"bad subject":      {"Subject: =?x-unknown?q?a?=\r\n\r\nbody", "subject"},
		"bad content type": {"Content-Type: multipart/\r\n\r\nbody", "Content-Type"},
		"unexpected part": {"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/x-sh\r\n\r\nrm -rf /\r\n--b--\r\n",
			`unexpected part "application/x-sh"`},
		"unterminated multipart": {"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi", "unexpected EOF"},
	} {
		t.Run(name, func(t *testing.T) {
			m, err := Parse([]byte(tc.raw))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
			if string(m.Raw) != tc.raw {
				t.Fatal("Raw not kept")
			}
		})
	}
	// An injected header shows in HeaderNames even where net/mail would fold it into one field.
	m, err := Parse([]byte("To: a@example.org\r\nBcc: evil@example.org\r\nTo: b@example.org\r\n\r\nhi=3D"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(m.HeaderNames, []string{"To", "Bcc", "To"}) || m.Text != "hi=3D" || m.HTML != "" {
		t.Fatalf("HeaderNames %q Text %q", m.HeaderNames, m.Text)
	}
	// A single-part HTML message with quoted-printable: decoded, and in HTML.
	m, err = Parse([]byte("Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p a=3D\"b\">x</p>"))
	if err != nil || m.HTML != `<p a="b">x</p>` || m.Text != "" {
		t.Fatalf("HTML %q Text %q: %v", m.HTML, m.Text, err)
	}
}

func TestStartRefusesBadOptions(t *testing.T) {
	for _, opts := range []Options{{Security: "ssl"}, {Security: "starttls"}, {Security: "tls"}} {
		f := &fatalTB{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			StartWith(f, opts)
		}()
		<-done
		if f.msg == "" {
			t.Errorf("StartWith(%+v) did not fail", opts)
		}
	}
}
