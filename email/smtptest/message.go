package smtptest

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"regexp"
	"strings"
)

// Message is one mail: its envelope as the server received it, and its content taken apart.
type Message struct {
	From string   // envelope sender (MAIL FROM)
	To   []string // envelope recipients (RCPT TO)
	TLS  bool     // the DATA arrived over TLS
	User string   // the AUTH user, if the client authenticated
	Raw  []byte   // the DATA as sent

	Header mail.Header
	// HeaderNames lists every header field name in order, continuation lines skipped, so a
	// test can see fields net/mail would merge or hide (a second To, an injected Bcc).
	HeaderNames []string
	Subject     string // decoded (RFC 2047)
	// Text and HTML are the decoded text/plain and text/html parts; Text is the whole body of a
	// message that is not multipart.
	Text, HTML string
	// Err is why the content could not be taken apart; the fields above hold what could be.
	Err error
}

// Parse takes a message apart into the content fields of Message. A message with a part that
// is neither text/plain nor text/html is an error: ozo-identity sends no other.
func Parse(raw []byte) (Message, error) {
	m := Message{Raw: raw}
	head, _, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !ok {
		return m, errors.New("no end of header (CRLF CRLF)")
	}
	for _, line := range strings.Split(string(head), "\r\n") {
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		name, _, _ := strings.Cut(line, ":")
		m.HeaderNames = append(m.HeaderNames, name)
	}
	pm, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return m, fmt.Errorf("header: %w", err)
	}
	m.Header = pm.Header
	if m.Subject, err = new(mime.WordDecoder).DecodeHeader(pm.Header.Get("Subject")); err != nil {
		return m, fmt.Errorf("subject: %w", err)
	}
	ct := pm.Header.Get("Content-Type")
	if ct == "" {
		ct = "text/plain" // RFC 2045's default
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return m, fmt.Errorf("Content-Type %q: %w", ct, err)
	}
	if !strings.HasPrefix(mt, "multipart/") {
		body, err := io.ReadAll(decode(pm.Body, pm.Header.Get("Content-Transfer-Encoding")))
		if mt == "text/html" {
			m.HTML = string(body)
		} else {
			m.Text = string(body)
		}
		if err != nil {
			return m, fmt.Errorf("body: %w", err)
		}
		return m, nil
	}
	mr := multipart.NewReader(pm.Body, params["boundary"])
	for {
		part, err := mr.NextPart() // undoes quoted-printable itself
		if err == io.EOF {
			return m, nil
		}
		if err != nil {
			return m, fmt.Errorf("multipart: %w", err)
		}
		body, err := io.ReadAll(decode(part, part.Header.Get("Content-Transfer-Encoding")))
		if err != nil {
			return m, fmt.Errorf("part body: %w", err)
		}
		switch pt := part.Header.Get("Content-Type"); {
		case strings.HasPrefix(pt, "text/plain"):
			m.Text = string(body)
		case strings.HasPrefix(pt, "text/html"):
			m.HTML = string(body)
		default:
			return m, fmt.Errorf("unexpected part %q", pt)
		}
	}
}

func decode(r io.Reader, transferEncoding string) io.Reader {
	switch strings.ToLower(strings.TrimSpace(transferEncoding)) {
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, r) // skips line breaks itself
	}
	return r
}

var validationLinkRE = regexp.MustCompile(`https?://[^\s"'<>]+/validate/email/submitToken\?[^\s"'<>]+`)

// ValidationLink returns the first email validation (submitToken) link in the text part, or ""
// if there is none.
func (m Message) ValidationLink() string {
	return validationLinkRE.FindString(m.Text)
}
