package main

import (
	"strings"

	"github.com/spf13/pflag"
)

// listValue is a repeatable string flag: each use appends its value as is
// (no splitting on commas), as pflag's StringArray does. It is ferry's own
// because pflag's computes its default's text through an encoding/csv
// writer, a 4 KiB buffer per flag: at every start, for flags whose default
// is empty, that was about a tenth of the page faults of building the
// command tree, on the path to ferry's ready signal.
type listValue struct{ p *[]string }

// listVarP defines a repeatable string flag that appends to *p, which starts
// empty.
func listVarP(fl *pflag.FlagSet, p *[]string, name, shorthand, usage string) {
	*p = nil
	fl.VarP(listValue{p}, name, shorthand, usage)
}

// listVar is listVarP without a shorthand.
func listVar(fl *pflag.FlagSet, p *[]string, name, usage string) {
	listVarP(fl, p, name, "", usage)
}

func (v listValue) Set(s string) error {
	*v.p = append(*v.p, s)
	return nil
}

// Type names the value in --help as pflag's StringArray does.
func (v listValue) Type() string { return "stringArray" }

// String is empty for an empty list, which --help takes for "no default".
func (v listValue) String() string {
	if len(*v.p) == 0 {
		return ""
	}
	return "[" + strings.Join(*v.p, ",") + "]"
}
