package e2e

import (
	"bytes"
	"fmt"
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

// Mail is one message as the MailSink received it, decoded.
type Mail struct {
	From    string   // envelope sender
	To      []string // envelope recipients
	Subject string
	// Text and HTML are the decoded bodies of the text/plain and text/html
	// parts (Text is the whole body of a message that is not multipart).
	Text, HTML string
	Raw        []byte
}

// MailSink is a real SMTP server (go-smtp) on 127.0.0.1 that keeps every
// message, so a test can read the mails an identity server sends.
type MailSink struct {
	Host string
	Port int

	mu      sync.Mutex
	msgs    []Mail
	changed chan struct{} // closed and replaced on every new message
}

// StartMailSink listens on a free loopback port (plain SMTP, no auth) until
// the test ends.
func StartMailSink(t testing.TB) *MailSink {
	t.Helper()
	m := &MailSink{Host: "127.0.0.1", changed: make(chan struct{})}
	srv := smtp.NewServer(m)
	srv.Domain = "localhost"
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.MaxMessageBytes = 1 << 20
	srv.ErrorLog = log.New(io.Discard, "", 0)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("e2e: mail sink: %v", err)
	}
	m.Port = l.Addr().(*net.TCPAddr).Port
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return m
}

// To returns the messages received so far for address (case-insensitive).
func (m *MailSink) To(address string) []Mail {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Mail
	for _, msg := range m.msgs {
		for _, rcpt := range msg.To {
			if strings.EqualFold(rcpt, address) {
				out = append(out, msg)
				break
			}
		}
	}
	return out
}

// Wait returns the message for address that follows the first `seen` ones
// (take seen from len(To(address)) before the action that sends it), failing
// the test if it has not arrived within timeout.
func (m *MailSink) Wait(t testing.TB, address string, seen int, timeout time.Duration) Mail {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		if got := m.To(address); len(got) > seen {
			return got[seen]
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("e2e: no mail #%d to %s within %s (got %d)", seen+1, address, timeout, len(m.To(address)))
		case <-t.Context().Done():
			t.Fatalf("e2e: test ended waiting for mail to %s", address)
		}
	}
}

func (m *MailSink) add(msg Mail) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.msgs = append(m.msgs, msg)
	close(m.changed)
	m.changed = make(chan struct{})
}

// NewSession implements smtp.Backend.
func (m *MailSink) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &mailSession{sink: m}, nil
}

type mailSession struct {
	sink *MailSink
	cur  Mail
}

func (s *mailSession) Mail(from string, _ *smtp.MailOptions) error {
	s.cur = Mail{From: from}
	return nil
}

func (s *mailSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.To = append(s.cur.To, to)
	return nil
}

func (s *mailSession) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	msg := s.cur
	msg.Raw = raw
	if err := decodeMail(&msg); err != nil {
		// Keep it anyway: the test then fails on its content, with Raw to show.
		msg.Text = fmt.Sprintf("(undecodable: %v)", err)
	}
	s.sink.add(msg)
	return nil
}

func (s *mailSession) Reset()        { s.cur = Mail{} }
func (s *mailSession) Logout() error { return nil }

// decodeMail fills Subject, Text and HTML from Raw.
func decodeMail(msg *Mail) error {
	parsed, err := mail.ReadMessage(bytes.NewReader(msg.Raw))
	if err != nil {
		return err
	}
	if msg.Subject, err = new(mime.WordDecoder).DecodeHeader(parsed.Header.Get("Subject")); err != nil {
		return fmt.Errorf("subject: %w", err)
	}
	mt, params, err := mime.ParseMediaType(parsed.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") {
		body, err := io.ReadAll(parsed.Body)
		msg.Text = string(body)
		return err
	}
	mr := multipart.NewReader(parsed.Body, params["boundary"])
	for {
		part, err := mr.NextPart() // undoes quoted-printable
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		body, err := io.ReadAll(part)
		if err != nil {
			return err
		}
		switch ct := part.Header.Get("Content-Type"); {
		case strings.HasPrefix(ct, "text/plain"):
			msg.Text = string(body)
		case strings.HasPrefix(ct, "text/html"):
			msg.HTML = string(body)
		}
	}
}
