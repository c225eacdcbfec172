// Package wasmgate is the Go API of the wasmgate:device@0.1.0 `app` world:
// an app implements App, registers its constructor in an init function,
// and talks to its devices, its storage, its log and the content service
// through this package.
//
//	func init() { wasmgate.Register(newThermostat) }
//
// Nothing here touches the canonical ABI. wit-bindgen's Go generator makes
// the bindings from the WIT at build time (the module
// wasmgate.example/guests/go/wit, in out/bindings; guests/build go); this
// package only turns their types (witTypes.Result, Tuple2, the `value`
// variant) into plain Go ones and back, and hands the exports to the App.
//
// Build with GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared, then make
// a component (guests/build go does all of it).
package wasmgate

import (
	"fmt"
	"strconv"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
	"wasmgate.example/guests/go/wit/exports/export_wit_world"
	types "wasmgate.example/guests/go/wit/imports/wasmgate_device_types"

	// The generated //go:wasmexport functions: linked in by this import.
	_ "wasmgate.example/guests/go/wit/exports/wit_exports"
)

// A Value is one of Bool, Int, Number, Text or Bytes.
type Value interface{ isValue() }

type (
	Bool   bool
	Int    int64
	Number float64
	Text   string
	Bytes  []byte
)

func (Bool) isValue()   {}
func (Int) isValue()    {}
func (Number) isValue() {}
func (Text) isValue()   {}
func (Bytes) isValue()  {}

// AsFloat is the value as a float64 for Number and Int values.
func AsFloat(v Value) (float64, bool) {
	switch v := v.(type) {
	case Number:
		return float64(v), true
	case Int:
		return float64(v), true
	}
	return 0, false
}

// A Field is a named value of a report, point or alert.
type Field struct {
	Name  string
	Value Value
}

// F makes a field: wasmgate.F("temperature", wasmgate.Number(21.5)).
func F(name string, value Value) Field { return Field{name, value} }

// Fields are the attributes of a report, the fields of a point, ...
type Fields []Field

// ErrorKind says why the host refused a call.
type ErrorKind uint8

const (
	Invalid ErrorKind = iota
	Limit
	Unavailable
)

func (k ErrorKind) String() string {
	switch k {
	case Invalid:
		return "invalid"
	case Limit:
		return "limit"
	}
	return "unavailable"
}

// Error is a call the host refused; nothing of it was stored or sent.
type Error struct {
	Kind    ErrorKind
	Message string
}

func (e *Error) Error() string { return e.Kind.String() + ": " + e.Message }

// Config holds the app's key/values from gateway.toml.
type Config [][2]string

// Get is the value of key.
func (c Config) Get(key string) (string, bool) {
	for _, kv := range c {
		if kv[0] == key {
			return kv[1], true
		}
	}
	return "", false
}

// Float is key as a float64, def if not given, an error naming the key if it does not parse.
func (c Config) Float(key string, def float64) (float64, error) {
	raw, ok := c.Get(key)
	if !ok {
		return def, nil
	}
	x, err := strconv.ParseFloat(raw, 64)
	if err != nil {
		return 0, fmt.Errorf("config key %s: cannot parse %q: %v", key, raw, err)
	}
	return x, nil
}

// Uint64 is key as a uint64, def if not given.
func (c Config) Uint64(key string, def uint64) (uint64, error) {
	raw, ok := c.Get(key)
	if !ok {
		return def, nil
	}
	x, err := strconv.ParseUint(raw, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("config key %s: cannot parse %q: %v", key, raw, err)
	}
	return x, nil
}

// App is a wasmgate app. The host calls it one call at a time.
type App interface {
	// Save is the state to hand to the next instance (nil: none).
	Save() []byte
	// OnTick is called at the app's tick interval; now is ns since the epoch.
	OnTick(now uint64)
	// OnDesired applies desired changes, already checked against the model.
	OnDesired(device string, changes Fields) error
	// OnAction runs an action; argument is nil if none was given.
	OnAction(device, name string, argument Value) (Value, error)
}

var newApp func(Config, []byte) (App, error)

// Register the app's constructor (the WIT `init`): call it from an init function.
func Register(constructor func(config Config, previous []byte) (App, error)) {
	newApp = constructor
}

// --- Between these types and the generated ones ------------------------------

func toWIT(v Value) types.Value {
	switch v := v.(type) {
	case Bool:
		return types.MakeValueBoolean(bool(v))
	case Int:
		return types.MakeValueInteger(int64(v))
	case Number:
		return types.MakeValueNumber(float64(v))
	case Text:
		return types.MakeValueText(string(v))
	case Bytes:
		return types.MakeValueBytes(v)
	}
	panic("wasmgate: a Value must be Bool, Int, Number, Text or Bytes")
}

func fromWIT(v types.Value) Value {
	switch v.Tag() {
	case types.Value_Boolean:
		return Bool(v.Boolean())
	case types.Value_Integer:
		return Int(v.Integer())
	case types.Value_Number:
		return Number(v.Number())
	case types.Value_Text:
		return Text(v.Text())
	}
	return Bytes(v.Bytes())
}

func optionFromWIT(v witTypes.Option[types.Value]) (Value, bool) {
	if v.IsNone() {
		return nil, false
	}
	return fromWIT(v.Some()), true
}

func fieldsToWIT(fields []Field) types.Fields {
	out := make(types.Fields, len(fields))
	for i, f := range fields {
		out[i] = witTypes.Tuple2[string, types.Value]{F0: f.Name, F1: toWIT(f.Value)}
	}
	return out
}

func fieldsFromWIT(fields types.Fields) Fields {
	out := make(Fields, len(fields))
	for i, f := range fields {
		out[i] = Field{Name: f.F0, Value: fromWIT(f.F1)}
	}
	return out
}

func errorFromWIT(e types.Error) *Error {
	switch e.Tag() {
	case types.Error_Invalid:
		return &Error{Invalid, e.Invalid()}
	case types.Error_Limit:
		return &Error{Limit, e.Limit()}
	}
	return &Error{Unavailable, e.Unavailable()}
}

// check is a result<_, error> as a Go error (a literal nil when ok: a nil
// *Error in an error interface would not compare equal to nil).
func check(r witTypes.Result[witTypes.Unit, types.Error]) error {
	if r.IsErr() {
		return errorFromWIT(r.Err())
	}
	return nil
}

// --- The exports ----------------------------------------------------------------

func init() { export_wit_world.Impl = world{} }

// world hands the generated exports to the registered App.
type world struct{}

var current App

func done(err error) witTypes.Result[witTypes.Unit, string] {
	if err != nil {
		return witTypes.Err[witTypes.Unit](err.Error())
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

func (world) Init(config []witTypes.Tuple2[string, string], previous witTypes.Option[[]uint8]) witTypes.Result[witTypes.Unit, string] {
	if newApp == nil {
		return done(fmt.Errorf("wasmgate: the app did not call wasmgate.Register"))
	}
	pairs := make(Config, len(config))
	for i, kv := range config {
		pairs[i] = [2]string{kv.F0, kv.F1}
	}
	app, err := newApp(pairs, previous.SomeOr(nil))
	if err != nil {
		return done(err)
	}
	current = app
	return done(nil)
}

// release lets go of what the host handed over before this export (import
// results, which the runtime's cabi_realloc pins until an export releases
// them). wit-bindgen-go's exports do it only where their arguments allocate
// (init, on-desired, on-action): without this, an app that calls, say,
// StorageGet on every tick keeps every result pinned until the next desired
// change or action (a 4 KiB value a tick: 2 MiB more heap every 500 ticks). Go values made from them stay
// alive as long as they are referenced; nothing is handed to the host
// across exports.
func release() { witRuntime.Unpin() }

func (world) Save() witTypes.Option[[]uint8] {
	release()
	if state := current.Save(); state != nil {
		return witTypes.Some(state)
	}
	return witTypes.None[[]uint8]()
}

func (world) OnTick(now uint64) {
	release()
	current.OnTick(now)
}

func (world) OnDesired(device string, changes []witTypes.Tuple2[string, types.Value]) witTypes.Result[witTypes.Unit, string] {
	return done(current.OnDesired(device, fieldsFromWIT(changes)))
}

func (world) OnAction(device string, name string, argument witTypes.Option[types.Value]) witTypes.Result[witTypes.Option[types.Value], string] {
	arg, _ := optionFromWIT(argument)
	result, err := current.OnAction(device, name, arg)
	if err != nil {
		return witTypes.Err[witTypes.Option[types.Value]](err.Error())
	}
	if result == nil {
		return witTypes.Ok[witTypes.Option[types.Value], string](witTypes.None[types.Value]())
	}
	return witTypes.Ok[witTypes.Option[types.Value], string](witTypes.Some(toWIT(result)))
}
