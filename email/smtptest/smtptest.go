// Package smtptest runs a real SMTP server (emersion/go-smtp) on loopback for tests and keeps
// what it receives, so tests can read the mails ozo-identity sends.
package smtptest

import (
	"bytes"
	"io"
	"net"
	"net/mail"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Message is one received mail.
type Message struct {
	From string
	To   []string
	Data []byte
}

// Body returns the message's text with quoted-printable soft breaks joined, for simple searches.
func (m Message) Body() string {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		return string(m.Data)
	}
	b, _ := io.ReadAll(msg.Body)
	s := strings.ReplaceAll(string(b), "=\r\n", "")
	return strings.ReplaceAll(s, "=3D", "=")
}

// Header returns the named header of the message.
func (m Message) Header(name string) string {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		return ""
	}
	return msg.Header.Get(name)
}

// Server is a running test SMTP server.
type Server struct {
	Host string
	Port int

	mu     sync.Mutex
	msgs   []Message
	notify chan struct{}
}

// Start runs a plain SMTP server on 127.0.0.1 until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{notify: make(chan struct{}, 1)}
	srv := smtp.NewServer(backend{s})
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	s.Host, s.Port = "127.0.0.1", addr.Port
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// Messages returns what was received so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// WaitFor waits (bounded) for a message to the recipient and returns the newest one.
func (s *Server) WaitFor(t testing.TB, to string, timeout time.Duration) Message {
	t.Helper()
	deadline := time.After(timeout)
	for {
		msgs := s.Messages()
		for i := len(msgs) - 1; i >= 0; i-- {
			for _, rcpt := range msgs[i].To {
				if strings.EqualFold(rcpt, to) {
					return msgs[i]
				}
			}
		}
		select {
		case <-s.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no mail to %s within %s (got %d mails)", to, timeout, len(msgs))
		}
	}
}

var linkRE = regexp.MustCompile(`https?://[^\s"'<>]+submitToken\?[^\s"'<>]+`)

// ValidationLink returns the first submitToken link in a mail's body.
func (m Message) ValidationLink() string {
	return strings.ReplaceAll(linkRE.FindString(m.Body()), "&amp;", "&")
}

type backend struct{ s *Server }

func (b backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{s: b.s}, nil }

type session struct {
	s    *Server
	from string
	to   []string
}

func (x *session) Mail(from string, _ *smtp.MailOptions) error { x.from = from; return nil }
func (x *session) Rcpt(to string, _ *smtp.RcptOptions) error   { x.to = append(x.to, to); return nil }
func (x *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	x.s.mu.Lock()
	x.s.msgs = append(x.s.msgs, Message{From: x.from, To: x.to, Data: data})
	x.s.mu.Unlock()
	select {
	case x.s.notify <- struct{}{}:
	default:
	}
	return nil
}
func (x *session) Reset()        { x.from, x.to = "", nil }
func (x *session) Logout() error { return nil }
