// Package matrixid owns the grammar of Matrix user IDs and server names, so that every package
// accepts and splits them the same way.
package matrixid

import (
	"regexp"
	"strconv"
	"strings"
)

// ValidUserID reports whether s is a Matrix user ID: @localpart:server_name, at most 255 bytes,
// the localpart in the historical character set (printable ASCII without ':').
func ValidUserID(s string) bool {
	if len(s) > 255 || len(s) < 4 || s[0] != '@' {
		return false
	}
	local, server, ok := strings.Cut(s[1:], ":")
	if !ok || local == "" {
		return false
	}
	for i := 0; i < len(local); i++ {
		if c := local[i]; c < 0x21 || c > 0x7e {
			return false
		}
	}
	return ValidServerName(server)
}

var dnsName = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,253}[A-Za-z0-9])?$`)
var ipv6Literal = regexp.MustCompile(`^\[[0-9A-Fa-f:.]{2,45}\]$`)

// ValidServerName reports whether s is a Matrix server name: host or [IPv6] with optional port.
func ValidServerName(s string) bool {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return false
		}
		host, port = s[:end+1], strings.TrimPrefix(s[end+1:], ":")
		if port == "" && len(s) > end+1 {
			return false
		}
		if !ipv6Literal.MatchString(host) {
			return false
		}
	} else {
		if h, p, ok := strings.Cut(s, ":"); ok {
			host, port = h, p
			if port == "" {
				return false
			}
		}
		if !dnsName.MatchString(host) {
			return false
		}
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || strings.HasPrefix(port, "+") {
			return false
		}
	}
	return true
}

// ServerOf returns the server name of a Matrix user ID (empty when there is none).
func ServerOf(mxid string) string {
	_, server, _ := strings.Cut(mxid, ":")
	return server
}
