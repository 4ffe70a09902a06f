package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// statusJSON encodes a status message for scripts: field names as in
// admit.proto, every field present (zeros included, so scripts need no
// defaults), numbers as JSON numbers (64-bit ones too: every count and
// byte total sluice reports fits a float64 exactly below 2^53, and jq
// does arithmetic on them), and bytes fields (repository paths) as UTF-8
// strings. A path that is not valid UTF-8 keeps its valid runs and shows
// each stray byte as the six characters \xNN (a backslash escaped once
// more by JSON), so the output is still one readable string per path.
// Keys are in admit.proto's field order and the output is indented, so it
// is byte-stable.
func statusJSON(m proto.Message) ([]byte, error) {
	var out bytes.Buffer
	writeMessage(&out, m.ProtoReflect(), "")
	out.WriteByte('\n')
	if !json.Valid(out.Bytes()) { // a bug here must not reach a script
		return nil, errInvalidJSON
	}
	return out.Bytes(), nil
}

var errInvalidJSON = errors.New("status: produced invalid JSON (a bug: please report it)")

func writeMessage(b *bytes.Buffer, m protoreflect.Message, indent string) {
	fields := m.Descriptor().Fields()
	writeBlock(b, fields.Len(), "{}", indent, func(i int, in string) {
		fd := fields.Get(i)
		writeString(b, string(fd.Name()))
		b.WriteString(": ")
		switch {
		case fd.IsList():
			writeList(b, fd, m.Get(fd).List(), in)
		case fd.IsMap():
			writeMap(b, fd, m.Get(fd).Map(), in)
		case fd.Message() != nil && !m.Has(fd):
			writeMessage(b, m.Get(fd).Message(), in) // zero message, all fields
		default:
			writeValue(b, fd, m.Get(fd), in)
		}
	})
}

func writeList(b *bytes.Buffer, fd protoreflect.FieldDescriptor, l protoreflect.List, indent string) {
	writeBlock(b, l.Len(), "[]", indent, func(i int, in string) {
		writeValue(b, fd, l.Get(i), in)
	})
}

func writeMap(b *bytes.Buffer, fd protoreflect.FieldDescriptor, m protoreflect.Map, indent string) {
	// Sorted keys keep the output byte-stable.
	keys := make([]string, 0, m.Len())
	vals := map[string]protoreflect.Value{}
	m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		s := k.String()
		keys = append(keys, s)
		vals[s] = v
		return true
	})
	slices.Sort(keys)
	writeBlock(b, len(keys), "{}", indent, func(i int, in string) {
		writeString(b, keys[i])
		b.WriteString(": ")
		writeValue(b, fd.MapValue(), vals[keys[i]], in)
	})
}

// writeBlock writes n items, one a line at indent plus two spaces and
// separated by commas, between the two brackets; no items as "{}" or "[]"
// on one line.
func writeBlock(b *bytes.Buffer, n int, brackets, indent string, item func(i int, in string)) {
	if n == 0 {
		b.WriteString(brackets)
		return
	}
	in := indent + "  "
	b.WriteString(brackets[:1] + "\n")
	for i := 0; i < n; i++ {
		b.WriteString(in)
		item(i, in)
		if i < n-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString(indent + brackets[1:])
}

func writeValue(b *bytes.Buffer, fd protoreflect.FieldDescriptor, v protoreflect.Value, indent string) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		b.WriteString(strconv.FormatBool(v.Bool()))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		b.WriteString(strconv.FormatInt(v.Int(), 10))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		b.WriteString(strconv.FormatUint(v.Uint(), 10))
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		f := v.Float()
		if f != f || f > 1e308 || f < -1e308 { // NaN, ±Inf: JSON has none
			b.WriteString("null")
			return
		}
		b.WriteString(strconv.FormatFloat(f, 'g', -1, 64))
	case protoreflect.StringKind:
		writeString(b, v.String())
	case protoreflect.BytesKind:
		writeString(b, bytesToUTF8(v.Bytes()))
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			writeString(b, string(ev.Name()))
		} else {
			b.WriteString(strconv.Itoa(int(v.Enum())))
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		writeMessage(b, v.Message(), indent)
	default:
		b.WriteString("null")
	}
}

// bytesToUTF8 returns p as a string, each byte that is not part of valid
// UTF-8 written as \xNN.
func bytesToUTF8(p []byte) string {
	if utf8.Valid(p) {
		return string(p)
	}
	var s []byte
	for len(p) > 0 {
		r, n := utf8.DecodeRune(p)
		if r == utf8.RuneError && n <= 1 {
			s = append(s, '\\', 'x', hexDigit[p[0]>>4], hexDigit[p[0]&15])
			p = p[1:]
			continue
		}
		s = append(s, p[:n]...)
		p = p[n:]
	}
	return string(s)
}

const hexDigit = "0123456789abcdef"

// writeString writes s as a JSON string (encoding/json's escaping, without
// its HTML escaping).
func writeString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // cannot fail for a string
	b.Truncate(b.Len() - 1) // Encode's newline
}
