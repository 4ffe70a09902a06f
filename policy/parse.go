package policy

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

//go:embed default.toml
var defaultTOML []byte

// DefaultTOML returns the embedded default policy, comments included: what
// `sluice validate --print-defaults` prints and operators start from.
func DefaultTOML() []byte {
	return bytes.Clone(defaultTOML)
}

// Default returns the embedded default policy, parsed and validated, with
// Source DefaultSource. Each call returns a new Config. It panics only if the
// embedded file is broken, which the package's tests rule out.
func Default() *Config {
	c, err := Parse(DefaultSource, defaultTOML)
	if err != nil {
		panic("policy: embedded default.toml is invalid:\n" + err.Error())
	}
	return c
}

// defaultLimits returns a copy of the embedded default policy's rules.
func defaultLimits() []Limit {
	return Default().Limits
}

// Load reads and parses the policy file at path. A read error wraps the
// os error (errors.Is(err, fs.ErrNotExist) works); policy problems are
// returned as Errors.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes a policy strictly, applies defaults and validates it. name is
// the file name used in errors and stored as Config.Source. On any problem it
// returns a nil Config and Errors holding every problem found: TOML syntax
// (which stops parsing), unknown keys, wrong types, and everything Validate
// checks.
func Parse(name string, data []byte) (*Config, error) {
	s := scanDocument(name, data)
	if s.fatal {
		return nil, s.finish(nil)
	}
	errs := s.errs

	c := defaults()
	err := toml.NewDecoder(bytes.NewReader(s.withoutRefused(data))).DisallowUnknownFields().Decode(c)
	if err != nil {
		var strict *toml.StrictMissingError
		if !errors.As(err, &strict) {
			// The scan accepted what go-toml refuses (duplicate keys,
			// redefined tables, ...): report it and stop.
			return nil, s.finish([]*Error{s.locate(decodeError(name, err))})
		}
		// Every value was decoded; only unknown keys remain. The scan has
		// normally reported them already, with better advice.
		for _, e := range strictErrors(name, strict) {
			if !s.reported(e.Line) {
				errs = append(errs, e)
			}
		}
	}
	c.Source = name
	c.keys = s.keys
	if _, written := s.keys["limit"]; !written && s.counts["limit"] == 0 {
		// "A key left out keeps the value shown": a file that defines no
		// [[limit]] (one that only sets [agent] socket_group, say) keeps
		// the default rules instead of silently running everything
		// unlimited. `limit = []` is the explicit way to have none.
		c.Limits = defaultLimits()
		c.DefaultLimits = true
	}
	c.fillDefaults()
	for _, e := range c.validate() {
		if !s.wasRefused(e.path) {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		return nil, c.finish(errs)
	}
	return c, nil
}

// finish turns internal key paths into display keys and sorts problems by
// line, problems without a line last.
func finish(errs []*Error, names map[int]string) Errors {
	usable := usableNames(names)
	for _, e := range errs {
		if e.path != "" {
			e.Key = displayKey(e.path, usable)
			e.path = ""
		}
	}
	sort.SliceStable(errs, func(i, j int) bool {
		li, lj := errs[i].Line, errs[j].Line
		if li == 0 || lj == 0 {
			return li != 0 && lj == 0
		}
		return li < lj
	})
	return Errors(errs)
}

// finish is finish with the names of the config's rules.
func (c *Config) finish(errs []*Error) Errors {
	names := make(map[int]string, len(c.Limits))
	for i, l := range c.Limits {
		names[i] = l.Name
	}
	return finish(errs, names)
}

// usableNames keeps the rule names that identify one rule: valid and unique.
func usableNames(names map[int]string) map[int]string {
	count := make(map[string]int)
	for _, n := range names {
		count[n]++
	}
	out := make(map[int]string)
	for i, n := range names {
		if count[n] == 1 && validName(n) {
			out[i] = n
		}
	}
	return out
}

// displayKey renders "limit[1].max_queue_wait" as `limit "name".max_queue_wait`
// when rule 1 has a usable name.
func displayKey(path string, names map[int]string) string {
	const prefix = "limit["
	if !strings.HasPrefix(path, prefix) {
		return path
	}
	end := strings.IndexByte(path, ']')
	if end < 0 {
		return path
	}
	var idx int
	if _, err := fmt.Sscanf(path[len(prefix):end], "%d", &idx); err != nil {
		return path
	}
	name, ok := names[idx]
	if !ok {
		return path
	}
	return fmt.Sprintf("limit %q%s", name, path[end+1:])
}

// decodeError converts an error go-toml returned that the scan did not
// predict.
func decodeError(file string, err error) *Error {
	var de *toml.DecodeError
	if !errors.As(err, &de) {
		return &Error{File: file, Problem: strings.TrimPrefix(err.Error(), "toml: "), Fix: "fix the file and validate it again"}
	}
	line, _ := de.Position()
	problem := strings.TrimPrefix(de.Error(), "toml: ")
	fix := "fix the value on this line"
	if strings.Contains(problem, "already defined") || strings.Contains(problem, "redefin") {
		fix = "keep one definition and remove the others"
	}
	return &Error{File: file, Line: line, Key: strings.Join(de.Key(), "."), Problem: problem, Fix: fix}
}

// strictErrors converts go-toml's unknown-key report, one Error per key.
func strictErrors(file string, sm *toml.StrictMissingError) []*Error {
	out := make([]*Error, 0, len(sm.Errors))
	for i := range sm.Errors {
		de := &sm.Errors[i]
		line, _ := de.Position()
		key := []string(de.Key())
		var section []string
		if len(key) > 0 {
			section = key[:len(key)-1]
		}
		e := &Error{File: file, Line: line, Key: strings.Join(key, "."), Problem: "unknown key"}
		if len(key) > 0 {
			e.Fix = unknownFix(key[len(key)-1], section)
		}
		out = append(out, e)
	}
	return out
}
