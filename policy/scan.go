package policy

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// The scan walks the TOML document once before it is decoded. It checks
// every key against the Config schema (derived from the struct tags, so the
// two cannot drift apart) and every value against its field's type, so that
// all unknown keys and wrong types are reported at once with their lines,
// where the decoder stops at the first. It also records where each key is
// written, so that Validate can point at the line of a bad value.

// keyPos is where a key is written.
type keyPos struct {
	line  int    // 1-based
	value string // the value as written; "" for table headers
}

// kind is what a schema field holds.
type kind int

const (
	kString kind = iota
	kInt
	kFloat
	kBool
	kDuration
	kStrings // list of strings
	kTable   // struct: [table] or inline table
	kTables  // list of structs: [[table]]
)

var (
	configType   = reflect.TypeFor[Config]()
	durationType = reflect.TypeFor[Duration]()
)

func kindOf(t reflect.Type) kind {
	if t == durationType {
		return kDuration
	}
	switch t.Kind() {
	case reflect.String:
		return kString
	case reflect.Int, reflect.Int64:
		return kInt
	case reflect.Float64:
		return kFloat
	case reflect.Bool:
		return kBool
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Struct {
			return kTables
		}
		return kStrings
	case reflect.Struct:
		return kTable
	}
	panic("policy: no TOML kind for " + t.String())
}

// field returns the type of the field of struct t with TOML key key.
func field(t reflect.Type, key string) (reflect.Type, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.IsExported() && tomlName(f) == key {
			return f.Type, true
		}
	}
	return nil, false
}

func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	return name
}

// knownKeys lists the TOML keys of struct t in declaration order.
func knownKeys(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if n := tomlName(f); f.IsExported() && n != "" && n != "-" {
			out = append(out, n)
		}
	}
	return out
}

// unknownFix advises on an unknown key found in the table at section (key
// names from the root, without array indexes).
func unknownFix(key string, section []string) string {
	t := configType
	for _, s := range section {
		ft, ok := field(t, s)
		if !ok {
			return "remove it, or check the spelling"
		}
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() != reflect.Struct {
			return "remove it, or check the spelling"
		}
		t = ft
	}
	known := knownKeys(t)
	fix := fmt.Sprintf("remove it, or check the spelling (known keys in %s: %s)", sectionName(t, section), strings.Join(known, ", "))
	if s := closest(key, known); s != "" {
		fix = fmt.Sprintf("did you mean %q? %s", s, fix)
	}
	return fix
}

func sectionName(t reflect.Type, section []string) string {
	if len(section) == 0 {
		return "the top level"
	}
	name := strings.Join(section, ".")
	if t == reflect.TypeFor[Limit]() {
		return "[[" + name + "]]"
	}
	return "[" + name + "]"
}

// closest returns the known key nearest to key (ignoring case, or within two
// edits), "" when none is near.
func closest(key string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if strings.EqualFold(k, key) {
			return k
		}
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// scanner holds the state of one scan.
type scanner struct {
	p      unstable.Parser
	file   string
	keys   map[string]keyPos
	counts map[string]int // array-of-tables path → elements seen
	names  map[int]string // rule index → name as written
	errs   []*Error
	fatal  bool // the document cannot be decoded: syntax or structural type errors
	// refused are the lines of scalar values of the wrong type or out of
	// range (reported in errs): Parse decodes the document without them,
	// so the rest of the file is still validated.
	refused map[int]string // line → key path

	newlines []int // offsets of '\n' in the document, built on first use
}

// table is the table key-values currently land in.
type table struct {
	path string
	t    reflect.Type
}

func scanDocument(file string, data []byte) *scanner {
	s := &scanner{
		file:   file,
		keys:   make(map[string]keyPos),
		counts: make(map[string]int),
		names:  make(map[int]string),
	}
	s.p.Reset(data)
	cur := &table{t: configType}
	for s.p.NextExpression() {
		e := s.p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			cur = s.header(e)
		case unstable.KeyValue:
			if cur != nil {
				s.keyValue(cur.path, cur.t, e)
			}
		}
	}
	if err := s.p.Error(); err != nil {
		s.syntax(err)
	}
	return s
}

// finish renders the scan's problems plus extra.
func (s *scanner) finish(extra []*Error) Errors {
	return finish(append(s.errs, extra...), s.names)
}

// locate replaces the key of a problem go-toml found with the full path of
// the key the scan saw on the same line (go-toml names only the last table's
// keys).
func (s *scanner) locate(e *Error) *Error {
	if e.Line == 0 {
		return e
	}
	best := ""
	for p, pos := range s.keys {
		if pos.line == e.Line && (best == "" || len(p) < len(best) || len(p) == len(best) && p < best) {
			best = p
		}
	}
	if best != "" {
		e.Key, e.path = "", best
		e.Value = s.keys[best].value
	}
	return e
}

// reported says whether the scan reported a problem on line.
func (s *scanner) reported(line int) bool {
	for _, e := range s.errs {
		if e.Line == line {
			return true
		}
	}
	return false
}

func (s *scanner) syntax(err error) {
	s.fatal = true
	e := &Error{File: s.file, Problem: "TOML syntax: " + err.Error(), Fix: "correct the syntax (see https://toml.io/en/v1.0.0)"}
	if pe, ok := err.(*unstable.ParserError); ok {
		e.Problem = "TOML syntax: " + pe.Message
		if off, ok := s.offset(pe.Highlight); ok {
			pos := s.position(off)
			e.Line = pos.Line
			e.Problem += fmt.Sprintf(" (column %d)", pos.Column)
		}
	}
	s.errs = append(s.errs, e)
}

// offset locates b in the document; false when b is not a part of it.
func (s *scanner) offset(b []byte) (int, bool) {
	data := s.p.Data()
	if b == nil {
		return 0, false
	}
	off := cap(data) - cap(b)
	if off < 0 || off+len(b) > len(data) {
		return 0, false
	}
	return off, true
}

func (s *scanner) position(off int) unstable.Position {
	if s.newlines == nil {
		data := s.p.Data()
		s.newlines = make([]int, 0, bytes.Count(data, []byte{'\n'}))
		for i, c := range data {
			if c == '\n' {
				s.newlines = append(s.newlines, i)
			}
		}
	}
	// Lines before off = newlines at offsets < off.
	n := sort.SearchInts(s.newlines, off)
	start := 0
	if n > 0 {
		start = s.newlines[n-1] + 1
	}
	return unstable.Position{Offset: off, Line: n + 1, Column: off - start + 1}
}

// line is the line a node starts on; def when the node has no position.
func (s *scanner) line(n *unstable.Node, def int) int {
	if n == nil || n.Raw.Length == 0 {
		return def
	}
	return s.position(int(n.Raw.Offset)).Line
}

func (s *scanner) unknown(line int, section, key string) {
	var sec []string
	if section != "" {
		for _, p := range strings.Split(section, ".") {
			name, _, _ := strings.Cut(p, "[")
			sec = append(sec, name)
		}
	}
	s.errs = append(s.errs, &Error{
		File: s.file, Line: line, path: join(section, key),
		Problem: "unknown key", Fix: unknownFix(key, sec),
	})
}

func (s *scanner) typeError(line int, path, value, problem, fix string) {
	s.fatal = true
	s.errs = append(s.errs, &Error{File: s.file, Line: line, path: path, Value: value, Problem: problem, Fix: fix})
}

// refuse reports a scalar value that cannot be decoded. Its line is left
// out of the decode (see refused) when the value sits on that one line;
// a multi-line string makes the document undecodable, as a type error.
func (s *scanner) refuse(line int, path, value, problem, fix string) {
	if strings.HasPrefix(value, `"""`) || strings.HasPrefix(value, "'''") {
		s.typeError(line, path, value, problem, fix)
		return
	}
	if s.refused == nil {
		s.refused = make(map[int]string)
	}
	s.refused[line] = path
	s.errs = append(s.errs, &Error{File: s.file, Line: line, path: path, Value: value, Problem: problem, Fix: fix})
}

// withoutRefused returns data with each refused line turned into a comment.
func (s *scanner) withoutRefused(data []byte) []byte {
	if len(s.refused) == 0 {
		return data
	}
	lines := bytes.Split(data, []byte("\n"))
	for l := range s.refused {
		if l >= 1 && l <= len(lines) {
			lines[l-1] = append([]byte("# "), lines[l-1]...)
		}
	}
	return bytes.Join(lines, []byte("\n"))
}

// wasRefused reports whether path's value was refused: a "missing" problem
// with it follows from leaving its line out and is not reported twice.
func (s *scanner) wasRefused(path string) bool {
	for _, p := range s.refused {
		if p == path {
			return true
		}
	}
	return false
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

type tomlKey struct {
	name string
	node *unstable.Node
}

func tomlKeys(e *unstable.Node) []tomlKey {
	var parts []tomlKey
	it := e.Key()
	for it.Next() {
		parts = append(parts, tomlKey{string(it.Node().Data), it.Node()})
	}
	return parts
}

// header handles [table] and [[table]]; it returns where the following
// key-values go, nil when they cannot go anywhere (already reported).
func (s *scanner) header(e *unstable.Node) *table {
	parts := tomlKeys(e)
	line := s.line(parts[0].node, 0)
	t, path := configType, ""
	for i, part := range parts {
		ft, ok := field(t, part.name)
		if !ok {
			s.unknown(line, path, part.name)
			return nil
		}
		key := join(path, part.name)
		last := i == len(parts)-1
		switch kindOf(ft) {
		case kTables:
			n := s.counts[key]
			if last && e.Kind == unstable.ArrayTable {
				s.counts[key] = n + 1
			} else if n == 0 {
				s.typeError(line, key, "", "is a list of tables", fmt.Sprintf("write each entry as [[%s]]", key))
				return nil
			} else {
				n-- // [limit.x] extends the last [[limit]]
			}
			path = key + "[" + strconv.Itoa(n) + "]"
			t = ft.Elem()
		case kTable:
			if last && e.Kind == unstable.ArrayTable {
				s.typeError(line, key, "", "is a table, not a list of tables", fmt.Sprintf("write it as [%s]", key))
				return nil
			}
			path, t = key, ft
		default:
			s.typeError(line, key, "", "is a value, not a table", fmt.Sprintf("write it as %s = ... under its table", part.name))
			return nil
		}
	}
	s.keys[path] = keyPos{line: line}
	return &table{path: path, t: t}
}

// keyValue handles key = value (possibly dotted) in the table at path.
func (s *scanner) keyValue(path string, t reflect.Type, e *unstable.Node) {
	parts := tomlKeys(e)
	line := s.line(parts[0].node, 0)
	for i, part := range parts {
		ft, ok := field(t, part.name)
		if !ok {
			s.unknown(line, path, part.name)
			return
		}
		key := join(path, part.name)
		if i < len(parts)-1 {
			if kindOf(ft) != kTable {
				s.typeError(line, key, "", "cannot take a dotted key", fmt.Sprintf("write %s = value in its own table", part.name))
				return
			}
			path, t = key, ft
			continue
		}
		raw := s.rawValue(e, parts[len(parts)-1].node)
		s.keys[key] = keyPos{line: line, value: raw}
		if v := e.Value(); t == reflect.TypeFor[Limit]() && part.name == "name" && v.Kind == unstable.String {
			if idx, ok := ruleIndex(path); ok {
				s.names[idx] = string(v.Data)
			}
		}
		s.value(key, ft, e.Value(), line, raw)
	}
}

// ruleIndex extracts i from "limit[i]".
func ruleIndex(path string) (int, bool) {
	rest, ok := strings.CutPrefix(path, "limit[")
	if !ok {
		return 0, false
	}
	n, ok := strings.CutSuffix(rest, "]")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(n)
	return i, err == nil
}

// rawValue is the text of a key-value's value as written.
func (s *scanner) rawValue(kv, lastKey *unstable.Node) string {
	raw := s.p.Raw(kv.Raw)
	keyEnd := int(lastKey.Raw.Offset+lastKey.Raw.Length) - int(kv.Raw.Offset)
	if keyEnd < 0 || keyEnd > len(raw) {
		return ""
	}
	v := strings.TrimSpace(string(raw[keyEnd:]))
	v = strings.TrimSpace(strings.TrimPrefix(v, "="))
	return v
}

// value checks a value against the type of its field.
func (s *scanner) value(path string, t reflect.Type, v *unstable.Node, line int, raw string) {
	k := kindOf(t)
	switch k {
	case kString:
		if v.Kind == unstable.String {
			return
		}
	case kInt:
		if v.Kind == unstable.Integer {
			if _, err := strconv.ParseInt(string(v.Data), 0, 64); err != nil {
				s.refuse(line, path, raw, "is out of range", "write a smaller whole number")
			}
			return
		}
	case kFloat:
		if v.Kind == unstable.Float || v.Kind == unstable.Integer {
			return
		}
	case kBool:
		if v.Kind == unstable.Bool {
			return
		}
	case kDuration:
		switch v.Kind {
		case unstable.String:
			if _, err := parseDuration(string(v.Data)); err != nil {
				s.refuse(line, path, raw, "is not a Go duration", `write one such as "30s" or "1m30s" (units ns, us, ms, s, m, h)`)
			}
			return
		case unstable.Integer, unstable.Float:
			s.refuse(line, path, raw, "is a number, not a duration",
				fmt.Sprintf("quote a Go duration with its unit, such as \"%ss\"", strings.ReplaceAll(raw, "_", "")))
			return
		}
	case kStrings:
		if v.Kind == unstable.Array {
			it := v.Children()
			for i := 0; it.Next(); i++ {
				el := it.Node()
				elPath := path + "[" + strconv.Itoa(i) + "]"
				elLine := s.line(el, line)
				if el.Kind != unstable.String {
					s.typeError(elLine, elPath, "", "is "+article(el.Kind)+", want a string", `quote it, such as "upload-pack"`)
					continue
				}
				s.keys[elPath] = keyPos{line: elLine, value: string(s.p.Raw(el.Raw))}
			}
			return
		}
	case kTable:
		if v.Kind == unstable.InlineTable {
			s.keys[path] = keyPos{line: line}
			it := v.Children()
			for it.Next() {
				if it.Node().Kind == unstable.KeyValue {
					s.keyValue(path, t, it.Node())
				}
			}
			return
		}
	case kTables:
		if v.Kind == unstable.Array {
			it := v.Children()
			for it.Next() {
				el := it.Node()
				n := s.counts[path]
				s.counts[path] = n + 1
				elPath := path + "[" + strconv.Itoa(n) + "]"
				if el.Kind != unstable.InlineTable {
					s.typeError(s.line(el, line), elPath, "", "is "+article(el.Kind)+", want a table", fmt.Sprintf("write each entry as a [[%s]] table", path))
					continue
				}
				s.keys[elPath] = keyPos{line: s.line(el, line)}
				kids := el.Children()
				for kids.Next() {
					if kids.Node().Kind == unstable.KeyValue {
						s.keyValue(elPath, t.Elem(), kids.Node())
					}
				}
			}
			return
		}
	}
	switch v.Kind {
	case unstable.String, unstable.Integer, unstable.Float, unstable.Bool:
		s.refuse(line, path, raw, "is "+article(v.Kind)+", want "+want(k), fixFor(k, path))
	default:
		s.typeError(line, path, raw, "is "+article(v.Kind)+", want "+want(k), fixFor(k, path))
	}
}

func article(k unstable.Kind) string {
	switch k {
	case unstable.String:
		return "a string"
	case unstable.Integer:
		return "an integer"
	case unstable.Float:
		return "a float"
	case unstable.Bool:
		return "a boolean"
	case unstable.Array:
		return "a list"
	case unstable.InlineTable:
		return "a table"
	default:
		return "a date or time"
	}
}

func want(k kind) string {
	switch k {
	case kString:
		return "a string"
	case kInt:
		return "a whole number"
	case kFloat:
		return "a number"
	case kBool:
		return "true or false"
	case kDuration:
		return "a Go duration string"
	case kStrings:
		return "a list of strings"
	case kTable:
		return "a table"
	default:
		return "a list of tables"
	}
}

func fixFor(k kind, path string) string {
	switch k {
	case kString:
		return `quote it, such as "text"`
	case kInt:
		return "write a whole number without quotes, such as 10"
	case kFloat:
		return "write a number without quotes, such as 0.5"
	case kBool:
		return "write true or false, without quotes"
	case kDuration:
		return `write a quoted Go duration such as "30s"`
	case kStrings:
		return `write a list of strings, such as ["upload-pack"]`
	case kTable:
		return fmt.Sprintf("write it as a [%s] table", path)
	default:
		return fmt.Sprintf("write each entry as a [[%s]] table", path)
	}
}
