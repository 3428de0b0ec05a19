package audit

import (
	"fmt"
)

// Head is the stored state of the chain: its newest record and how much was pruned.
type Head struct {
	Seq int64
	MAC string
	// PrunedSeq and PrunedMAC are the newest record removed by retention (0 and "" when none);
	// the oldest kept record chains to PrunedMAC.
	PrunedSeq int64
	PrunedMAC string
}

// Problem is what verification found wrong.
type Problem struct {
	Seq    int64  // the first record concerned
	Kind   string // "rewritten", "missing", "truncated", "checkpoint"
	Detail string
}

func (p *Problem) Error() string {
	return fmt.Sprintf("audit chain %s at record %d: %s", p.Kind, p.Seq, p.Detail)
}

// Verifier checks a chain record by record, in order, holding only the previous MAC: the
// whole chain is checked without loading it.
type Verifier struct {
	chain      *Chain
	checkpoint *Checkpoint
	next       int64
	prevMAC    string
	started    bool
	head       Head
	count      int64
	// CheckpointSeen is set once the checkpointed record was found with its MAC.
	checkpointSeen bool
}

// NewVerifier starts a verification against the stored head and, when not nil, a checkpoint
// whose signature the caller has already checked.
func NewVerifier(c *Chain, head Head, cp *Checkpoint) *Verifier {
	return &Verifier{chain: c, checkpoint: cp, head: head, next: head.PrunedSeq + 1, prevMAC: head.PrunedMAC}
}

// Add checks the next record; the first problem is returned and verification should stop.
func (v *Verifier) Add(r Record) error {
	if r.Seq != v.next {
		if r.Seq > v.next {
			return &Problem{Seq: v.next, Kind: "missing", Detail: fmt.Sprintf("records %d to %d are missing", v.next, r.Seq-1)}
		}
		return &Problem{Seq: r.Seq, Kind: "rewritten", Detail: "sequence number out of order"}
	}
	if r.PrevMAC != v.prevMAC {
		return &Problem{Seq: r.Seq, Kind: "rewritten", Detail: "does not chain to the record before it"}
	}
	if !v.chain.Valid(r) {
		return &Problem{Seq: r.Seq, Kind: "rewritten", Detail: "its MAC does not match its content (changed, or written without the key)"}
	}
	if cp := v.checkpoint; cp != nil && r.Seq == cp.Seq {
		if r.MAC != cp.MAC {
			return &Problem{Seq: r.Seq, Kind: "checkpoint", Detail: "differs from the signed checkpoint: the chain was rewritten since"}
		}
		v.checkpointSeen = true
	}
	v.next, v.prevMAC = r.Seq+1, r.MAC
	v.count++
	return nil
}

// Report summarises a verification.
type Report struct {
	Records  int64  `json:"records"`
	FirstSeq int64  `json:"first_seq"`
	LastSeq  int64  `json:"last_seq"`
	HeadMAC  string `json:"head_mac"`
	Pruned   int64  `json:"pruned"`
	// Checkpoint is the sequence number of the checkpoint verified against (0: none).
	Checkpoint int64 `json:"checkpoint,omitempty"`
}

// Finish checks the end of the chain against the stored head and the checkpoint.
func (v *Verifier) Finish() (Report, error) {
	rep := Report{Records: v.count, FirstSeq: v.head.PrunedSeq + 1, LastSeq: v.next - 1, HeadMAC: v.prevMAC, Pruned: v.head.PrunedSeq}
	if v.count == 0 {
		rep.FirstSeq = 0
	}
	if cp := v.checkpoint; cp != nil {
		rep.Checkpoint = cp.Seq
		switch {
		case v.next-1 < cp.Seq:
			return rep, &Problem{Seq: v.next, Kind: "truncated", Detail: fmt.Sprintf("the chain ends at %d but the checkpoint covers %d", v.next-1, cp.Seq)}
		case !v.checkpointSeen && cp.Seq > v.head.PrunedSeq:
			return rep, &Problem{Seq: cp.Seq, Kind: "checkpoint", Detail: "the checkpointed record was not found"}
		case !v.checkpointSeen && cp.Seq == v.head.PrunedSeq && cp.MAC != v.head.PrunedMAC:
			return rep, &Problem{Seq: cp.Seq, Kind: "checkpoint", Detail: "the pruned head differs from the signed checkpoint"}
		}
	}
	if v.head.Seq != v.next-1 || v.head.MAC != v.prevMAC {
		// Records beyond the last one found, or a head that was moved back: rows were removed.
		if v.head.Seq > v.next-1 {
			return rep, &Problem{Seq: v.next, Kind: "truncated", Detail: fmt.Sprintf("the chain head says %d records but the chain ends at %d", v.head.Seq, v.next-1)}
		}
		return rep, &Problem{Seq: v.head.Seq, Kind: "rewritten", Detail: "the stored chain head does not match the last record"}
	}
	return rep, nil
}
