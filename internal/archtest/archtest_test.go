package archtest

import (
	"slices"
	"testing"
)

// The module itself keeps the rules.
func TestDomainPackagesStayBehindTheirPorts(t *testing.T) {
	vs, err := Check("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Errorf("%s: domain packages must not import api, app or storage/sqlstore", v)
	}
}

// A fixture module (testdata/badmod) where identity imports storage/sqlstore, directly, and
// lookup/mcsd reaches app through identity: Check must report both and nothing else.
func TestCheckFindsAWrongImport(t *testing.T) {
	vs, err := Check("testdata/badmod")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		got = append(got, v.String())
	}
	slices.Sort(got)
	want := []string{
		"identity imports app",
		"identity imports storage/sqlstore",
		"lookup/mcsd imports app",
		"lookup/mcsd imports storage/sqlstore",
	}
	if !slices.Equal(got, want) {
		t.Errorf("violations:\n got %q\nwant %q", got, want)
	}
}
