package ozoaccount

import (
	"testing"
)

// BenchmarkVerifyPassword is the cost of one login's password check (and of the dummy check an
// unknown email gets) at the configured default, OWASP's argon2id recommendation.
func BenchmarkVerifyPassword(b *testing.B) {
	for _, p := range []struct {
		name   string
		params Argon2Params
	}{
		{"owasp_m19MiB_t2_p1", DefaultArgon2},
		{"owasp_m46MiB_t1_p1", Argon2Params{MemoryKiB: 46 * 1024, Iterations: 1, Parallelism: 1}},
	} {
		b.Run(p.name, func(b *testing.B) {
			hash, err := hashPassword("correct horse battery staple", p.params)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if ok, _, err := verifyPassword("correct horse battery staple", hash, p.params); !ok || err != nil {
					b.Fatal("verification failed", err)
				}
			}
		})
	}
}
