// Package smtptest runs a real SMTP server (emersion/go-smtp) on loopback for tests and keeps
// every message it receives, taken apart, so tests can read the mails ozo-identity sends.
package smtptest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Options configure a server; the zero value is plain SMTP without AUTH.
type Options struct {
	// Security is how clients connect, named as in the mailer's configuration: "none" (plain
	// SMTP, the default), "starttls" (plain, offering STARTTLS) or "tls" (TLS from the first
	// byte). The last two serve TLS.
	Security string
	TLS      *tls.Config
	// Username, if set, makes AUTH PLAIN with Username and Password required before MAIL FROM.
	// Over plain SMTP the server offers AUTH too: the mailer allows that to loopback only.
	Username, Password string
	// RejectRecipients answers every RCPT TO with 550 5.1.1, as for an unknown user.
	RejectRecipients bool
	// Host is the IP address to listen on; empty means 127.0.0.1. Tests of what the mailer does
	// with a remote (non-loopback) host listen on one of the machine's other addresses.
	Host string
}

// Server is a running test SMTP server on 127.0.0.1 (or Options.Host).
type Server struct {
	Host string
	Port int

	opts    Options
	mu      sync.Mutex
	msgs    []Message
	changed chan struct{} // closed and replaced on every new message, so any number can wait
}

// Start runs a plain SMTP server until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith runs a server configured by opts until the test ends.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	switch opts.Security {
	case "", "none":
	case "starttls", "tls":
		if opts.TLS == nil {
			t.Fatalf("smtptest: security %q needs a TLS configuration", opts.Security)
		}
	default:
		t.Fatalf("smtptest: unknown security %q", opts.Security)
	}
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	s := &Server{Host: host, opts: opts, changed: make(chan struct{})}
	srv := smtp.NewServer(backend{s})
	srv.Domain = "localhost"
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.MaxMessageBytes = 1 << 20
	srv.MaxRecipients = 10
	srv.ErrorLog = log.New(io.Discard, "", 0) // tests refuse handshakes and drop connections on purpose
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("smtptest: %v", err)
	}
	switch opts.Security {
	case "", "none":
		srv.AllowInsecureAuth = true
	case "starttls":
		srv.TLSConfig = opts.TLS
	case "tls":
		l = tls.NewListener(l, opts.TLS)
	}
	s.Port = l.Addr().(*net.TCPAddr).Port
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return s
}

// Messages returns every message received so far, in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// To returns the messages whose envelope names rcpt (case-insensitive), in order.
func (s *Server) To(rcpt string) []Message {
	var out []Message
	for _, m := range s.Messages() {
		if slices.ContainsFunc(m.To, func(r string) bool { return strings.EqualFold(r, rcpt) }) {
			out = append(out, m)
		}
	}
	return out
}

// Wait returns the nth message (counting from 1) to rcpt, failing the test if it has not
// arrived within timeout. Take n from len(To(rcpt))+1 before the action that sends it.
func (s *Server) Wait(t testing.TB, rcpt string, n int, timeout time.Duration) Message {
	t.Helper()
	if n < 1 {
		t.Fatalf("smtptest: Wait for message #%d: counting starts at 1", n)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		changed := s.changed // before reading, so no message slips in between unseen
		s.mu.Unlock()
		if got := s.To(rcpt); len(got) >= n {
			return got[n-1]
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("smtptest: no message #%d to %s within %s (got %d; undecodable: %v)",
				n, rcpt, timeout, len(s.To(rcpt)), s.parseErrors())
		case <-t.Context().Done():
			t.Fatalf("smtptest: test ended waiting for message #%d to %s", n, rcpt)
		}
	}
}

func (s *Server) parseErrors() []error {
	var errs []error
	for _, m := range s.Messages() {
		if m.Err != nil {
			errs = append(errs, m.Err)
		}
	}
	return errs
}

func (s *Server) add(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

type backend struct{ s *Server }

func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: b.s, conn: c}, nil
}

type session struct {
	s    *Server
	conn *smtp.Conn
	user string // authenticated as
	from string
	to   []string
}

func (x *session) AuthMechanisms() []string {
	if x.s.opts.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (x *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != x.s.opts.Username || pass != x.s.opts.Password {
			return errors.New("invalid credentials")
		}
		x.user = user
		return nil
	}), nil
}

func (x *session) Mail(from string, _ *smtp.MailOptions) error {
	if x.s.opts.Username != "" && x.user == "" {
		return smtp.ErrAuthRequired
	}
	x.from, x.to = from, nil
	return nil
}

func (x *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if x.s.opts.RejectRecipients {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	x.to = append(x.to, to)
	return nil
}

func (x *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read DATA: %w", err)
	}
	// Kept even if it cannot be taken apart: the test then fails on its content, with Raw to show.
	m, err := Parse(raw)
	m.Err = err
	m.From, m.To = x.from, slices.Clone(x.to)
	_, m.TLS = x.conn.TLSConnectionState()
	m.User = x.user
	x.s.add(m)
	return nil
}

func (x *session) Reset()        { x.from, x.to = "", nil }
func (x *session) Logout() error { return nil }
