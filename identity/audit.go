package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// AuditHash chains a record to its predecessor, so editing or removing a row breaks the chain.
func AuditHash(rec AuditRecord) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%d\x00%s\x00%s\x00%s\x00%s\x00%s", rec.Seq, rec.At.UnixMilli(), rec.Actor, rec.Action, rec.Target, rec.Detail, rec.PrevHash)
	return hex.EncodeToString(h.Sum(nil))
}

// VerifyAuditChain reports the first record whose hash does not follow from its predecessor.
func VerifyAuditChain(records []AuditRecord, prevHash string) error {
	for _, r := range records {
		if r.PrevHash != prevHash || AuditHash(r) != r.Hash {
			return fmt.Errorf("audit record %d does not match the chain", r.Seq)
		}
		prevHash = r.Hash
	}
	return nil
}
