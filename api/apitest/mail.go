package apitest

import (
	"bytes"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one mail the SMTP server accepted, with its envelope and its decoded parts.
type Message struct {
	From   string   // envelope sender
	Rcpt   []string // envelope recipients
	Raw    []byte
	Header mail.Header
	// HeaderNames lists every header field name in order, continuation lines skipped.
	HeaderNames []string
	Text, HTML  string
}

// MailServer is a real SMTP server (emersion/go-smtp) on 127.0.0.1 that keeps every message.
type MailServer struct {
	Port int

	mu     sync.Mutex
	msgs   []Message
	errs   []string
	notify chan struct{}
}

// NewMailServer starts the server; it stops when the test ends.
func NewMailServer(t testing.TB) *MailServer {
	t.Helper()
	m := &MailServer{notify: make(chan struct{}, 1)}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &mailSession{m: m}, nil }))
	srv.Domain = "localhost"
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.MaxMessageBytes = 1 << 20
	srv.MaxRecipients = 10
	srv.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.Port = l.Addr().(*net.TCPAddr).Port
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return m
}

// Messages returns a copy of every message received so far.
func (m *MailServer) Messages() []Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Message(nil), m.msgs...)
}

// To returns the messages whose envelope names rcpt.
func (m *MailServer) To(rcpt string) []Message {
	var out []Message
	for _, msg := range m.Messages() {
		for _, r := range msg.Rcpt {
			if strings.EqualFold(r, rcpt) {
				out = append(out, msg)
				break
			}
		}
	}
	return out
}

// WaitTo waits until at least n messages to rcpt arrived and returns the nth (1-based).
func (m *MailServer) WaitTo(t testing.TB, rcpt string, n int) Message {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		if got := m.To(rcpt); len(got) >= n {
			return got[n-1]
		}
		select {
		case <-m.notify:
		case <-deadline.C:
			t.Fatalf("no message %d to %s within 10s (have %d; parse errors %v)", n, rcpt, len(m.To(rcpt)), m.parseErrors())
		}
	}
}

func (m *MailServer) parseErrors() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.errs...)
}

type mailSession struct {
	m    *MailServer
	from string
	rcpt []string
}

func (s *mailSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *mailSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpt = append(s.rcpt, to)
	return nil
}

func (s *mailSession) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	msg, perr := parseMail(raw)
	msg.From, msg.Rcpt = s.from, append([]string(nil), s.rcpt...)
	s.m.mu.Lock()
	if perr != nil {
		s.m.errs = append(s.m.errs, perr.Error())
	}
	s.m.msgs = append(s.m.msgs, msg)
	s.m.mu.Unlock()
	select {
	case s.m.notify <- struct{}{}:
	default:
	}
	return nil
}

func (s *mailSession) Reset()        { s.from, s.rcpt = "", nil }
func (s *mailSession) Logout() error { return nil }

// parseMail takes a message apart; a message it cannot parse is kept raw, so a test can show it.
func parseMail(raw []byte) (Message, error) {
	msg := Message{Raw: raw}
	if head, _, ok := bytes.Cut(raw, []byte("\r\n\r\n")); ok {
		for _, line := range strings.Split(string(head), "\r\n") {
			if line == "" || line[0] == ' ' || line[0] == '\t' {
				continue
			}
			name, _, _ := strings.Cut(line, ":")
			msg.HeaderNames = append(msg.HeaderNames, name)
		}
	}
	pm, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return msg, err
	}
	msg.Header = pm.Header
	mt, params, err := mime.ParseMediaType(pm.Header.Get("Content-Type"))
	if err != nil {
		return msg, err
	}
	if !strings.HasPrefix(mt, "multipart/") {
		body, err := io.ReadAll(pm.Body)
		msg.Text = string(body)
		return msg, err
	}
	mr := multipart.NewReader(pm.Body, params["boundary"])
	for {
		part, err := mr.NextPart() // decodes quoted-printable
		if err == io.EOF {
			return msg, nil
		}
		if err != nil {
			return msg, err
		}
		body, err := io.ReadAll(part)
		if err != nil {
			return msg, err
		}
		switch ct := part.Header.Get("Content-Type"); {
		case strings.HasPrefix(ct, "text/plain"):
			msg.Text = string(body)
		case strings.HasPrefix(ct, "text/html"):
			msg.HTML = string(body)
		}
	}
}
