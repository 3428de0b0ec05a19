package email

import (
	"context"
	"errors"
	"fmt"
	"net"
	netsmtp "net/smtp"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ozo-platform/ozo-identity/email/smtptest"
	"github.com/ozo-platform/ozo-identity/internal/pkitest"
)

func newMailer(t *testing.T, cfg Config) *Mailer {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	m, err := New(cfg, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m
}

func TestSendModes(t *testing.T) {
	serverTLS, clientTLS := testCA(t)
	for _, tc := range []struct {
		mode, user string
		wantTLS    bool
	}{
		{mode: "none"},
		{mode: "none", user: "mailer"}, // AUTH without TLS: allowed to loopback only
		{mode: "starttls", wantTLS: true},
		{mode: "starttls", user: "mailer", wantTLS: true},
		{mode: "tls", wantTLS: true},
		{mode: "tls", user: "mailer", wantTLS: true},
	} {
		t.Run(fmt.Sprintf("%s/auth=%v", tc.mode, tc.user != ""), func(t *testing.T) {
			sink := smtptest.StartWith(t, smtptest.Options{Security: tc.mode, TLS: serverTLS, Username: tc.user, Password: "s3cret"})
			m := newMailer(t, Config{
				Host: "127.0.0.1", Port: sink.Port, Security: tc.mode,
				Username: tc.user, Password: map[bool]string{true: "s3cret"}[tc.user != ""],
				From: "OZO Identiteit <noreply@id.example.nl>", HeloName: "id.example.nl",
				TLSConfig: clientTLS,
			})
			to := "bob@example.org"
			if err := m.Send(context.Background(), KindValidation, to, validationVars()); err != nil {
				t.Fatalf("Send: %v", err)
			}
			msgs := sink.Messages()
			if len(msgs) != 1 {
				t.Fatalf("server got %d messages, want 1", len(msgs))
			}
			got := msgs[0]
			if got.From != "noreply@id.example.nl" || len(got.To) != 1 || got.To[0] != to {
				t.Errorf("envelope from %q rcpt %q", got.From, got.To)
			}
			if got.TLS != tc.wantTLS {
				t.Errorf("TLS = %v, want %v", got.TLS, tc.wantTLS)
			}
			if got.User != tc.user {
				t.Errorf("authenticated user %q, want %q", got.User, tc.user)
			}
			p := parseMessage(t, got.Raw)
			for _, part := range []string{p.Text, p.HTML} {
				if !strings.Contains(part, "T0k3nValue") {
					t.Errorf("token missing from part:\n%s", part)
				}
			}
			if !strings.Contains(p.Text, validationVars()["link"]) {
				t.Errorf("link missing from text part:\n%s", p.Text)
			}
			// In HTML the & of the link is written &amp;.
			if !strings.Contains(p.HTML, strings.ReplaceAll(validationVars()["link"], "&", "&amp;")) {
				t.Errorf("link missing from html part:\n%s", p.HTML)
			}
			if p.Header.Get("To") != to || !strings.Contains(p.Header.Get("From"), "<noreply@id.example.nl>") {
				t.Errorf("To %q From %q", p.Header.Get("To"), p.Header.Get("From"))
			}
			if _, err := p.Header.Date(); err != nil {
				t.Errorf("Date: %v", err)
			}
			if id := p.Header.Get("Message-Id"); !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, "@id.example.nl>") {
				t.Errorf("Message-ID %q", id)
			}
			if p.Header.Get("Mime-Version") != "1.0" {
				t.Errorf("MIME-Version %q", p.Header.Get("Mime-Version"))
			}
			if p.Subject != "Confirm your email address / Bevestig uw e-mailadres" {
				t.Errorf("subject %q", p.Subject)
			}
		})
	}
}

func TestStartTLSRequiredButNotOffered(t *testing.T) {
	// A server without STARTTLS (or an attacker stripping it): no fallback.
	sink := smtptest.Start(t)
	m := newMailer(t, Config{Host: "127.0.0.1", Port: sink.Port, Security: "starttls"})
	err := m.Send(context.Background(), KindValidation, "bob@example.org", validationVars())
	if err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("err = %v, want a STARTTLS error", err)
	}
	if n := len(sink.Messages()); n != 0 {
		t.Fatalf("server got %d messages over plain text", n)
	}
}

func TestUntrustedCertificate(t *testing.T) {
	serverTLS, _ := testCA(t)
	_, otherCA := testCA(t)
	for _, mode := range []string{"starttls", "tls"} {
		t.Run(mode, func(t *testing.T) {
			sink := smtptest.StartWith(t, smtptest.Options{Security: mode, TLS: serverTLS})
			m := newMailer(t, Config{Host: "127.0.0.1", Port: sink.Port, Security: mode, TLSConfig: otherCA})
			err := m.Send(context.Background(), KindValidation, "bob@example.org", validationVars())
			if err == nil || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("err = %v, want a certificate error", err)
			}
			if n := len(sink.Messages()); n != 0 {
				t.Fatalf("server got %d messages", n)
			}
		})
	}
}

func TestAuthFailures(t *testing.T) {
	serverTLS, clientTLS := testCA(t)
	t.Run("wrong password", func(t *testing.T) {
		sink := smtptest.StartWith(t, smtptest.Options{Security: "tls", TLS: serverTLS, Username: "mailer", Password: "right"})
		m := newMailer(t, Config{Host: "127.0.0.1", Port: sink.Port, Security: "tls",
			Username: "mailer", Password: "wrong", TLSConfig: clientTLS})
		err := m.Send(context.Background(), KindValidation, "bob@example.org", validationVars())
		if err == nil || !strings.Contains(err.Error(), "AUTH") {
			t.Fatalf("err = %v, want an AUTH error", err)
		}
		if n := len(sink.Messages()); n != 0 {
			t.Fatalf("server got %d messages", n)
		}
	})
	t.Run("server without AUTH", func(t *testing.T) {
		sink := smtptest.StartWith(t, smtptest.Options{Security: "tls", TLS: serverTLS})
		m := newMailer(t, Config{Host: "127.0.0.1", Port: sink.Port, Security: "tls",
			Username: "mailer", Password: "x", TLSConfig: clientTLS})
		err := m.Send(context.Background(), KindValidation, "bob@example.org", validationVars())
		if err == nil || !strings.Contains(err.Error(), "AUTH") {
			t.Fatalf("err = %v, want an AUTH error", err)
		}
	})
	t.Run("plain text to a remote host", func(t *testing.T) {
		_, err := New(Config{Host: "mail.example.org", Security: "none", Username: "u", Password: "p"}, nil)
		if err == nil || !strings.Contains(err.Error(), "TLS") {
			t.Fatalf("New err = %v, want refusal of AUTH without TLS", err)
		}
	})
	t.Run("plainAuth refuses unencrypted remote", func(t *testing.T) {
		a := &plainAuth{username: "u", password: "p", host: "mail.example.org"}
		if _, _, err := a.Start(&netsmtp.ServerInfo{Name: "mail.example.org"}); err == nil {
			t.Fatal("PLAIN started without TLS to a remote host")
		}
	})
}

func TestRecipientRejected(t *testing.T) {
	sink := smtptest.StartWith(t, smtptest.Options{RejectRecipients: true})
	m := newMailer(t, Config{Host: "127.0.0.1", Port: sink.Port})
	err := m.Send(context.Background(), KindValidation, "nobody@example.org", validationVars())
	if err == nil || !strings.Contains(err.Error(), "RCPT TO") || !strings.Contains(err.Error(), "550") {
		t.Fatalf("err = %v, want RCPT TO 550", err)
	}
}

func TestConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	m := newMailer(t, Config{Host: "127.0.0.1", Port: port, Timeout: 2 * time.Second})
	start := time.Now()
	err = m.Send(context.Background(), KindValidation, "bob@example.org", validationVars())
	if err == nil || !strings.Contains(err.Error(), "connect") || !strings.Contains(err.Error(), fmt.Sprint(port)) {
		t.Fatalf("err = %v, want a connect error naming the port", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("refused connection took %v", d)
	}
}

// stallingServer accepts connections and never says a word.
func stallingServer(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().(*net.TCPAddr).Port
}

func TestTimeouts(t *testing.T) {
	_, clientTLS := testCA(t)
	for _, tc := range []struct {
		name     string
		security string
		timeout  time.Duration // Config.Timeout
		ctx      time.Duration // caller's deadline
	}{
		{"config timeout, greeting never comes", "none", 300 * time.Millisecond, time.Minute},
		{"ctx deadline, greeting never comes", "none", time.Minute, 300 * time.Millisecond},
		{"config timeout, TLS handshake never comes", "tls", 300 * time.Millisecond, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := stallingServer(t)
			m := newMailer(t, Config{Host: "127.0.0.1", Port: port, Security: tc.security,
				Timeout: tc.timeout, TLSConfig: clientTLS})
			ctx, cancel := context.WithTimeout(context.Background(), tc.ctx)
			defer cancel()
			start := time.Now()
			err := m.Send(ctx, KindValidation, "bob@example.org", validationVars())
			elapsed := time.Since(start)
			if err == nil {
				t.Fatal("Send to a silent server succeeded")
			}
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("err = %v, want a deadline error", err)
			}
			if !strings.Contains(err.Error(), "127.0.0.1") {
				t.Errorf("err = %v, want the server address in it", err)
			}
			if elapsed > 3*time.Second {
				t.Fatalf("Send took %v, want about 300ms", elapsed)
			}
		})
	}
}

func TestCancelledContext(t *testing.T) {
	port := stallingServer(t)
	m := newMailer(t, Config{Host: "127.0.0.1", Port: port, Timeout: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err := m.Send(ctx, KindValidation, "bob@example.org", validationVars())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cancel took %v to take effect", d)
	}
}

func TestConcurrentSends(t *testing.T) {
	sink := smtptest.Start(t)
	m := newMailer(t, Config{Host: "127.0.0.1", Port: sink.Port, PublicBaseURL: "https://id.example.nl"})
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			vars := inviteVars()
			vars["token"] = fmt.Sprintf("tok%d", i)
			errs <- m.Send(context.Background(), KindInvite, fmt.Sprintf("user%d@example.org", i), vars)
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	msgs := sink.Messages()
	if len(msgs) != n {
		t.Fatalf("got %d messages, want %d", len(msgs), n)
	}
	ids := map[string]bool{}
	for _, msg := range msgs {
		p := parseMessage(t, msg.Raw)
		if want := strings.TrimSuffix(strings.TrimPrefix(msg.To[0], "user"), "@example.org"); !strings.Contains(p.Text, "tok"+want) {
			t.Errorf("message to %s lacks its own token", msg.To[0])
		}
		ids[p.Header.Get("Message-Id")] = true
	}
	if len(ids) != n {
		t.Errorf("%d distinct Message-IDs for %d messages", len(ids), n)
	}
}

// nonLoopbackIP returns an address of this machine that is not loopback, for a mail server the
// mailer must treat as remote.
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil && !ipn.IP.IsLinkLocalUnicast() {
			return ipn.IP.String()
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no non-loopback IPv4 address to run a remote SMTP server on")
	}
	t.Skip("no non-loopback IPv4 address")
	return ""
}

// With only a remote host configured, mail never goes out in clear (the mistake of Sydent's
// CVE-2023-38686): STARTTLS is required and the certificate is verified; plain SMTP to a remote
// host needs security "none" spelt out.
func TestRemoteHostRequiresVerifiedTLS(t *testing.T) {
	ip := nonLoopbackIP(t)
	ca := pkitest.NewCA(t)

	plain := smtptest.StartWith(t, smtptest.Options{Host: ip})
	m := newMailer(t, Config{Host: ip, Port: plain.Port, From: "noreply@id.example.nl", HeloName: "id.example.nl", TLSConfig: ca.ClientTLSConfig()})
	err := m.Send(context.Background(), KindValidation, "bob@example.org", validationVars())
	if err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("send to a remote server without STARTTLS: %v, want a refusal naming STARTTLS", err)
	}
	if n := len(plain.Messages()); n != 0 {
		t.Fatalf("the server got %d messages in clear", n)
	}

	// A certificate from a CA the mailer does not trust is refused too.
	other := pkitest.NewCA(t)
	untrusted := smtptest.StartWith(t, smtptest.Options{Host: ip, Security: "starttls", TLS: other.ServerTLSConfig(t, ip)})
	m = newMailer(t, Config{Host: ip, Port: untrusted.Port, From: "noreply@id.example.nl", HeloName: "id.example.nl", TLSConfig: ca.ClientTLSConfig()})
	if err := m.Send(context.Background(), KindValidation, "bob@example.org", validationVars()); err == nil {
		t.Fatal("sent over STARTTLS with an untrusted certificate")
	}
	if n := len(untrusted.Messages()); n != 0 {
		t.Fatalf("the untrusted server got %d messages", n)
	}

	good := smtptest.StartWith(t, smtptest.Options{Host: ip, Security: "starttls", TLS: ca.ServerTLSConfig(t, ip)})
	m = newMailer(t, Config{Host: ip, Port: good.Port, From: "noreply@id.example.nl", HeloName: "id.example.nl", TLSConfig: ca.ClientTLSConfig()})
	if err := m.Send(context.Background(), KindValidation, "bob@example.org", validationVars()); err != nil {
		t.Fatalf("send over verified STARTTLS: %v", err)
	}
	if msgs := good.Messages(); len(msgs) != 1 || !msgs[0].TLS {
		t.Fatalf("want one message over TLS, got %+v", msgs)
	}

	// Plain SMTP to a remote host only when configured so explicitly.
	m = newMailer(t, Config{Host: ip, Port: plain.Port, Security: SecurityNone, From: "noreply@id.example.nl", HeloName: "id.example.nl"})
	if err := m.Send(context.Background(), KindValidation, "bob@example.org", validationVars()); err != nil {
		t.Fatalf("explicit security none: %v", err)
	}
	if msgs := plain.Messages(); len(msgs) != 1 || msgs[0].TLS {
		t.Fatalf("explicit none: %+v", msgs)
	}
}
