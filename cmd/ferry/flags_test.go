package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestListFlag(t *testing.T) {
	fl := pflag.NewFlagSet("t", pflag.ContinueOnError)
	var got []string
	listVarP(fl, &got, "publish", "p", "publish a port (repeatable)")
	if err := fl.Parse([]string{"-p", "8080:80", "--publish=53:53/udp,54:54", "-p", ""}); err != nil {
		t.Fatal(err)
	}
	// Each use appends its value whole: no splitting on commas, empty
	// values kept, as pflag's StringArray.
	want := []string{"8080:80", "53:53/udp,54:54", ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("values = %q, want %q", got, want)
	}
	usage := fl.FlagUsages()
	if !strings.Contains(usage, "--publish stringArray") || strings.Contains(usage, "default") {
		t.Errorf("usage = %q, want the stringArray type and no default", usage)
	}
}

func TestListFlagUnused(t *testing.T) {
	fl := pflag.NewFlagSet("t", pflag.ContinueOnError)
	got := []string{"stale"}
	listVar(fl, &got, "deny", "refuse destinations")
	if err := fl.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if got != nil {
		t.Errorf("values = %q, want none", got)
	}
}
