package identity

import "fmt"

// Error is a failure the caller can act on, named by its Matrix error code.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Matrix error codes the identity service answers with.
const (
	CodeInvalidParam        = "M_INVALID_PARAM"
	CodeInvalidEmail        = "M_INVALID_EMAIL"
	CodeMissingParams       = "M_MISSING_PARAMS"
	CodeNotFound            = "M_NOT_FOUND"
	CodeNoValidSession      = "M_NO_VALID_SESSION"
	CodeSessionNotValidated = "M_SESSION_NOT_VALIDATED"
	CodeSessionExpired      = "M_SESSION_EXPIRED"
	CodeTokenIncorrect      = "M_TOKEN_INCORRECT"
	CodeThreePIDInUse       = "M_THREEPID_IN_USE"
	CodeInvalidPepper       = "M_INVALID_PEPPER"
	CodeForbidden           = "M_FORBIDDEN"
	CodeUnauthorized        = "M_UNAUTHORIZED"
	CodeTermsNotSigned      = "M_TERMS_NOT_SIGNED"
	CodeLimitExceeded       = "M_LIMIT_EXCEEDED"
	CodeEmailSendError      = "M_EMAIL_SEND_ERROR"
	CodeUnknown             = "M_UNKNOWN"
	CodeServerNotTrusted    = "M_SERVER_NOT_TRUSTED"
)
