package main

import (
	"strings"
	"testing"
)

// The rotation commands on a deployment's database: rotate makes ed25519:1 current and keeps
// ed25519:0 valid, list shows both, retire refuses the current key and retires the earlier one,
// pepper rotate stores a new pepper; a typo is refused with the usage.
func TestAdminKeyCommands(t *testing.T) {
	env := []string{"OZO_DATA_DIR=" + t.TempDir(), "OZO_LOG_LEVEL=warn"}
	if res := runCLI(t, env, "admin", "signing-key", "rotate"); res.err != nil || !strings.Contains(res.stdout, "signing with ed25519:1") ||
		!strings.Contains(res.stdout, "ed25519:0 stays valid until retired") {
		t.Fatalf("rotate: %v\n%s\n%s", res.err, res.stdout, res.stderr)
	}
	res := runCLI(t, env, "admin", "signing-key", "list")
	if res.err != nil || !strings.Contains(res.stdout, "ed25519:0") || !strings.Contains(res.stdout, "valid\n") ||
		!strings.Contains(res.stdout, "current\n") {
		t.Fatalf("list: %v\n%s", res.err, res.stdout)
	}
	if res := runCLI(t, env, "admin", "signing-key", "retire", "ed25519:1"); res.err == nil || !strings.Contains(res.err.Error(), "current signing key") {
		t.Fatalf("retire the current key: %v", res.err)
	}
	if res := runCLI(t, env, "admin", "signing-key", "retire", "ed25519:0"); res.err != nil {
		t.Fatalf("retire: %v\n%s", res.err, res.stderr)
	}
	if res := runCLI(t, env, "admin", "signing-key", "list"); !strings.Contains(res.stdout, "retired ") {
		t.Fatalf("list after retire:\n%s", res.stdout)
	}
	if res := runCLI(t, env, "admin", "pepper", "rotate"); res.err != nil || !strings.Contains(res.stdout, "new lookup pepper stored") {
		t.Fatalf("pepper rotate: %v\n%s\n%s", res.err, res.stdout, res.stderr)
	}
	if res := runCLI(t, env, "admin", "signing-key", "rotat"); res.err == nil || !strings.Contains(res.stderr, "usage: ozo-identity admin signing-key") {
		t.Fatalf("a typo: %v\n%s", res.err, res.stderr)
	}
	if res := runCLI(t, env, "admin", "signing-key", "retire"); res.err == nil {
		t.Fatal("retire without a key id")
	}
}
