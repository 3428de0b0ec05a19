package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/ozo-platform/ozo-identity/threepid"
)

// bodyLimit raises the body bound of the routes it wraps (lookups of max_batch addresses);
// every other route keeps http.max_body_bytes.
func bodyLimit(n int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), bodyLimitKey, n)))
		})
	}
}

// lookupBodyBytes fits max addresses of the longest accepted form ("address medium" with the
// longest address, quoted, comma-separated) plus the small body's bound for the rest.
func lookupBodyBytes(max int, small int64) int64 {
	const perAddress = threepid.MaxAddressLength + len(" uzi_nr") + len(`"",`)
	return int64(max)*int64(perAddress) + small
}

// readBody reads a body within the route's bound.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := s.cfg.MaxBodyBytes
	if n, ok := r.Context().Value(bodyLimitKey).(int64); ok {
		limit = n
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return nil, bodyError(err, limit)
	}
	return body, nil
}

// readAll is io.ReadAll into buf's spare capacity.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// bodyError says why a body could not be read.
func bodyError(err error, limit int64) error {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return &requestError{status: http.StatusRequestEntityTooLarge, code: "M_TOO_LARGE",
			msg: fmt.Sprintf("request body is larger than %d bytes", limit)}
	}
	return badRequest("M_UNKNOWN", "could not read the request body")
}

// decodeJSON decodes a JSON object body into v: M_NOT_JSON for broken JSON, M_BAD_JSON for wrong types.
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	return decodeJSONBytes(body, v)
}

func decodeJSONBytes(body []byte, v any) error {
	// Unmarshal checks the whole syntax before it decodes anything, so one pass tells broken
	// JSON (a SyntaxError, also for an empty body) from a wrong shape.
	if err := json.Unmarshal(body, v); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return badRequest("M_NOT_JSON", "the request body is not valid JSON")
		}
		var re *requestError
		if errors.As(err, &re) {
			return re // a field's own UnmarshalJSON already said what is wrong
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := te.Field
			if field == "" {
				return badRequest("M_BAD_JSON", "the request body must be a JSON object")
			}
			return badRequest("M_BAD_JSON", fmt.Sprintf("%s must be of type %s", field, jsonType(te.Type.String())))
		}
		return badRequest("M_BAD_JSON", "the request body does not have the expected shape")
	}
	return nil
}

func jsonType(goType string) string {
	switch {
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "float"):
		return "number"
	case goType == "string":
		return "string"
	case strings.HasPrefix(goType, "[]"):
		return "array"
	case goType == "bool":
		return "boolean"
	default:
		return "object"
	}
}

// decodeForm reads a v1 body: JSON or form-encoded, as old homeservers send either.
func (s *Server) decodeForm(w http.ResponseWriter, r *http.Request) (map[string]string, error) {
	body, err := s.readBody(w, r)
	if err != nil {
		return nil, err
	}
	return parseForm(body, r.Header.Get("Content-Type"))
}

// parseForm parses a v1 body, form-encoded or a JSON object of scalars, into its fields.
func parseForm(body []byte, contentType string) (map[string]string, error) {
	ct, _, _ := mime.ParseMediaType(contentType)
	out := map[string]string{}
	if ct == "application/x-www-form-urlencoded" {
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, badRequest("M_BAD_JSON", "the form body is malformed")
		}
		for k, v := range vals {
			out[k] = v[0]
		}
		return out, nil
	}
	var raw map[string]any
	if err := decodeJSONBytes(body, &raw); err != nil {
		return nil, err
	}
	for k, v := range raw {
		switch v := v.(type) {
		case string:
			out[k] = v
		case float64:
			out[k] = strconv.FormatFloat(v, 'f', -1, 64)
		case nil:
		default:
			return nil, badRequest("M_BAD_JSON", k+" must be a string")
		}
	}
	return out, nil
}

// required reports the first missing parameter as M_MISSING_PARAMS.
func required(fields map[string]string, names ...string) error {
	var missing []string
	for _, n := range names {
		if fields[n] == "" {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return badRequest("M_MISSING_PARAMS", "missing parameters: "+strings.Join(missing, ", "))
	}
	return nil
}
