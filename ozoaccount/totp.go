package ozoaccount

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"image"
	"image/draw"
	"image/png"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// totpPeriod and totpSkew: RFC 6238's 30-second steps, one step either side accepted for
// clock drift. SHA-1 and 6 digits, because that is what every authenticator app supports.
const (
	totpPeriod = 30
	totpSkew   = 1
)

var totpOpts = totp.ValidateOpts{Period: totpPeriod, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// Enrolment is what a person needs to add the account to an authenticator app.
type Enrolment struct {
	Secret     string // base32, for typing in
	OTPAuthURL string // otpauth://totp/…, the QR code's content
	QRPNG      []byte // the QR code as a PNG image
}

func newEnrolment(issuer, accountName string) (Enrolment, error) {
	key, err := totp.Generate(totp.GenerateOpts{Issuer: issuer, AccountName: accountName, Period: totpPeriod,
		SecretSize: 20, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		return Enrolment{}, fmt.Errorf("generate totp secret: %w", err)
	}
	return enrolmentOf(key)
}

// enrolmentFor rebuilds the enrolment of a pending secret (the page is shown again).
func enrolmentFor(issuer, accountName, secret string) (Enrolment, error) {
	key, err := totp.Generate(totp.GenerateOpts{Issuer: issuer, AccountName: accountName, Period: totpPeriod,
		Secret: mustBase32(secret), Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		return Enrolment{}, fmt.Errorf("totp secret: %w", err)
	}
	return enrolmentOf(key)
}

func enrolmentOf(key *otp.Key) (Enrolment, error) {
	code, err := key.Image(224, 224)
	if err != nil {
		return Enrolment{}, fmt.Errorf("totp qr code: %w", err)
	}
	// Scanners need a white quiet zone around the code, which the library leaves out.
	img := image.NewGray(image.Rect(0, 0, 256, 256))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	draw.Draw(img, code.Bounds().Add(image.Pt(16, 16)), code, code.Bounds().Min, draw.Src)
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return Enrolment{}, fmt.Errorf("totp qr code: %w", err)
	}
	return Enrolment{Secret: key.Secret(), OTPAuthURL: key.URL(), QRPNG: buf.Bytes()}, nil
}

func mustBase32(s string) []byte {
	b, _ := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(strings.TrimRight(s, "="))
	return b
}

// matchTOTP returns the time step whose code is code (within the skew), or false.
func matchTOTP(secret, code string, now time.Time) (int64, bool) {
	code = strings.TrimSpace(code)
	if len(code) != 6 {
		return 0, false
	}
	cur := now.Unix() / totpPeriod
	found, step := 0, int64(0)
	// Every candidate is computed and compared, so the time taken says nothing about which matched.
	for s := cur - totpSkew; s <= cur+totpSkew; s++ {
		want, err := totp.GenerateCodeCustom(secret, time.Unix(s*totpPeriod, 0), totpOpts)
		if err != nil {
			return 0, false
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 && found == 0 {
			found, step = 1, s
		}
	}
	return step, found == 1
}

// recoveryCodeCount recovery codes of 10 base32 characters (50 bits) each, shown once.
const recoveryCodeCount = 10

var recoveryAlphabet = base32.NewEncoding("abcdefghijkmnpqrstuvwxyz23456789").WithPadding(base32.NoPadding)

func newRecoveryCodes() ([]string, []string, error) {
	codes, hashes := make([]string, recoveryCodeCount), make([]string, recoveryCodeCount)
	for i := range codes {
		b := make([]byte, 7)
		if _, err := rand.Read(b); err != nil {
			return nil, nil, err
		}
		c := recoveryAlphabet.EncodeToString(b)[:10]
		codes[i] = c[:5] + "-" + c[5:]
		hashes[i] = hashRecoveryCode(codes[i])
	}
	return codes, hashes, nil
}

// hashRecoveryCode hashes a code as typed, ignoring case, spaces and dashes. The codes are
// random (50 bits), so a fast hash suffices.
func hashRecoveryCode(code string) string {
	c := strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' {
			return -1
		}
		return r
	}, strings.ToLower(code))
	sum := sha256.Sum256([]byte("ozo-recovery:" + c))
	return hex.EncodeToString(sum[:])
}
