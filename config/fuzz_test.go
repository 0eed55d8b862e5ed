package config

import (
	"errors"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it returns is
// an *Error naming the source, and that a config it accepts validates.
// More seeds (the default file among them) live in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(fullYAML))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			errs := []error{err}
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			for _, e := range errs {
				var ce *Error
				if !errors.As(e, &ce) || ce.Source != "fuzz.yaml" {
					t.Fatalf("error %q is not an *Error from fuzz.yaml", e)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config that does not validate: %v", err)
		}
		c.EnabledServices()
	})
}
