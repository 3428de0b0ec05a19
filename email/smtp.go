package email

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"time"
)

// Security modes of the SMTP connection.
const (
	SecurityNone     = "none"     // plain SMTP, no TLS
	SecurityStartTLS = "starttls" // STARTTLS required: fail if not offered
	SecurityTLS      = "tls"      // implicit TLS ("SMTPS", port 465)
)

// deliver hands msg to the SMTP server for the one recipient to. The whole
// exchange is bounded by the mailer's Timeout and by ctx.
func (m *Mailer) deliver(ctx context.Context, to string, msg []byte) (err error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	step := func(what string, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%s: %w (%w)", what, err, cerr)
		}
		return fmt.Errorf("%s: %w", what, err)
	}

	var conn net.Conn
	dialer := &net.Dialer{}
	if m.security == SecurityTLS {
		conn, err = (&tls.Dialer{NetDialer: dialer, Config: m.tlsConfig()}).DialContext(ctx, "tcp", m.addr)
	} else {
		conn, err = dialer.DialContext(ctx, "tcp", m.addr)
	}
	if err != nil {
		return step("connect", err)
	}
	defer conn.Close()
	// Deadlines bound a server that accepts and then stalls; AfterFunc makes
	// a cancelled ctx abort a read or write in progress.
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return step("set deadline", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	c, err := smtp.NewClient(conn, m.host)
	if err != nil {
		return step("read greeting", err)
	}
	defer c.Close()
	if err := c.Hello(m.helo); err != nil {
		return step("EHLO", err)
	}
	if m.security == SecurityStartTLS {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return errors.New("server does not offer STARTTLS, which security mode starttls requires")
		}
		if err := c.StartTLS(m.tlsConfig()); err != nil {
			return step("STARTTLS", err)
		}
	}
	if m.auth != nil {
		if ok, _ := c.Extension("AUTH"); !ok {
			return errors.New("server does not offer AUTH, but a username is configured")
		}
		if err := c.Auth(m.auth); err != nil {
			return step("AUTH", err)
		}
	}
	if err := c.Mail(m.envelopeFrom); err != nil {
		return step("MAIL FROM", err)
	}
	if err := c.Rcpt(to); err != nil {
		return step("RCPT TO", err)
	}
	w, err := c.Data()
	if err != nil {
		return step("DATA", err)
	}
	if _, err := w.Write(msg); err != nil {
		return step("write message", err)
	}
	if err := w.Close(); err != nil {
		return step("end of message", err)
	}
	if err := c.Quit(); err != nil {
		// The server accepted the message already; a failed QUIT loses nothing.
		m.log.DebugContext(ctx, "smtp QUIT failed after delivery", "err", err)
	}
	return nil
}

func (m *Mailer) tlsConfig() *tls.Config {
	var cfg *tls.Config
	if m.cfg.TLSConfig != nil {
		cfg = m.cfg.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg.ServerName = m.host
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	return cfg
}

// plainAuth is SASL PLAIN that sends the password only over TLS or to a
// loopback server. net/smtp's PlainAuth has the same rule but knows fewer
// loopback names than isLoopback, so New and the send would disagree.
type plainAuth struct {
	username, password, host string
	loopback                 bool
}

func (a *plainAuth) Start(server *smtp.ServerInfo) (string, []byte, error) {
	if !server.TLS && !a.loopback {
		return "", nil, errors.New("refusing to send the password over an unencrypted connection")
	}
	if server.Name != a.host {
		return "", nil, errors.New("wrong host name")
	}
	return "PLAIN", []byte("\x00" + a.username + "\x00" + a.password), nil
}

func (a *plainAuth) Next(_ []byte, more bool) ([]byte, error) {
	if more {
		return nil, errors.New("unexpected server challenge")
	}
	return nil, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
