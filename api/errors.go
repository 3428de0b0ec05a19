package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/ozo-platform/ozo-identity/homeserver"
	"github.com/ozo-platform/ozo-identity/identity"
)

// statusOf gives each Matrix error code its HTTP status; codes not listed answer 400.
var statusOf = map[string]int{
	identity.CodeUnauthorized:   http.StatusUnauthorized,
	identity.CodeForbidden:      http.StatusForbidden,
	identity.CodeTermsNotSigned: http.StatusForbidden,
	identity.CodeNotFound:       http.StatusNotFound,
	identity.CodeNoValidSession: http.StatusNotFound,
	identity.CodeLimitExceeded:  http.StatusTooManyRequests,
	identity.CodeEmailSendError: http.StatusInternalServerError,
	identity.CodeUnknown:        http.StatusInternalServerError,
	"M_TOO_LARGE":               http.StatusRequestEntityTooLarge,
	"M_UNRECOGNIZED":            http.StatusNotFound,
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func matrixError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"errcode": code, "error": msg})
}

// writeError answers err as a Matrix error; anything unexpected is logged and hidden behind M_UNKNOWN.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ie *identity.Error
	var re *requestError
	switch {
	case errors.As(err, &ie):
		status, ok := statusOf[ie.Code]
		if !ok {
			status = http.StatusBadRequest
		}
		matrixError(w, status, ie.Code, ie.Message)
	case errors.As(err, &re):
		matrixError(w, re.status, re.code, re.msg)
	case errors.Is(err, homeserver.ErrInvalidServerName):
		matrixError(w, http.StatusBadRequest, identity.CodeInvalidParam, "matrix_server_name is not a valid server name")
	case errors.Is(err, homeserver.ErrNotAllowed):
		matrixError(w, http.StatusForbidden, identity.CodeForbidden, "the homeserver's address is not allowed")
	case errors.Is(err, homeserver.ErrTokenRejected), errors.Is(err, homeserver.ErrForeignUser):
		matrixError(w, http.StatusUnauthorized, identity.CodeUnauthorized, "the homeserver did not accept the OpenID token")
	case errors.Is(err, homeserver.ErrTimeout):
		matrixError(w, http.StatusGatewayTimeout, identity.CodeUnknown, "the homeserver did not answer in time")
	case errors.Is(err, homeserver.ErrUnreachable), errors.Is(err, homeserver.ErrServerError),
		errors.Is(err, homeserver.ErrBadResponse), errors.Is(err, homeserver.ErrRateLimited),
		errors.Is(err, homeserver.ErrRejected), errors.Is(err, homeserver.ErrResponseTooLarge):
		matrixError(w, http.StatusBadGateway, identity.CodeUnknown, "could not verify the token at the homeserver")
	case errors.Is(err, homeserver.ErrRequestTooLarge):
		matrixError(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "request body too large")
	case errors.Is(err, homeserver.ErrUnauthorized):
		matrixError(w, http.StatusUnauthorized, identity.CodeUnauthorized, "the request is not signed by the homeserver")
	case errors.Is(err, context.Canceled):
		matrixError(w, 499, identity.CodeUnknown, "request cancelled")
	case s.unavailable(err):
		s.log.WarnContext(r.Context(), "request failed: database unreachable", "method", r.Method, "path", r.URL.Path, "err", err)
		tryAgain(w)
	default:
		s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		matrixError(w, http.StatusInternalServerError, identity.CodeUnknown, "internal server error")
	}
}

// unavailable reports a store error that means the database is gone for the moment.
func (s *Server) unavailable(err error) bool {
	return storeUnreachable(err) || s.cfg.Unavailable != nil && s.cfg.Unavailable(err)
}

// tryAgain answers 503 for a database that is gone for the moment: the client retries, here
// or at another replica, after Retry-After.
func tryAgain(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "5")
	matrixError(w, http.StatusServiceUnavailable, identity.CodeUnknown, "temporarily unavailable: the database did not answer; try again shortly")
}

// requestError is a problem with the request itself (its body or parameters).
type requestError struct {
	status    int
	code, msg string
}

func (e *requestError) Error() string { return e.code + ": " + e.msg }

func badRequest(code, msg string) error {
	return &requestError{status: http.StatusBadRequest, code: code, msg: msg}
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
