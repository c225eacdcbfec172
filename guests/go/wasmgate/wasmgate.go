// Package wasmgate is the Go binding of the wasmgate:device@0.1.0 `app`
// world: an app implements App, registers its constructor in an init
// function, and talks to its device, its storage and its log through this
// package.
//
//	func init() { wasmgate.Register(newThermostat) }
//
// Build with GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared, then make
// a component (guests/build go does both).
package wasmgate

import (
	"fmt"
	"runtime"
	"strconv"
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

// Severity of an alert.
type Severity uint8

const (
	Info Severity = iota
	Warning
	Critical
)

// Device is a device this app speaks for.
type Device struct{ handle uint32 }

// ThisDevice is the device the app speaks for by default. Keep the handle:
// the host caps how many are live at once.
func ThisDevice() *Device {
	d := &Device{importThisDevice()}
	runtime.SetFinalizer(d, func(d *Device) { importDropDevice(d.handle) })
	return d
}

// ID is the device id.
func (d *Device) ID() string {
	ret := alloc(8)
	importDeviceID(d.handle, addr(ret))
	p := addr(ret)
	return loadString(u32(p), u32(p+4))
}

// Report the current value of attributes (all or nothing).
func (d *Device) Report(attributes ...Field) error {
	ptr, n, keep := fieldsArg(attributes)
	ret := alloc(16)
	importDeviceReport(d.handle, ptr, n, addr(ret))
	runtime.KeepAlive(attributes)
	runtime.KeepAlive(keep)
	return resultVoid(ret)
}

func (d *Device) optionValue(name string, call func(self, p, n, ret uint32)) (Value, bool) {
	p, n := strArg(name)
	ret := alloc(24)
	call(d.handle, p, n, addr(ret))
	runtime.KeepAlive(name)
	if ret[0] == 0 {
		return nil, false
	}
	return loadValue(addr(ret) + 8), true
}

// Reported is the last value reported for an attribute.
func (d *Device) Reported(name string) (Value, bool) {
	return d.optionValue(name, importDeviceReported)
}

// Desired is the desired value of a writable attribute.
func (d *Device) Desired(name string) (Value, bool) {
	return d.optionValue(name, importDeviceDesired)
}

// Time is a point's time in a unit of the data source; nil means "now".
type Time struct {
	Unit  TimeUnit
	Value uint64
}

// TimeUnit of a Time.
type TimeUnit uint8

const (
	Seconds TimeUnit = iota
	Milliseconds
	Microseconds
	Nanoseconds
)

// Record one point of a time-series; at == nil means now.
func (d *Device) Record(series string, at *Time, values ...Field) error {
	sp, sn := strArg(series)
	fp, fn, keep := fieldsArg(values)
	var isSome, unit uint32
	var t uint64
	if at != nil {
		isSome, unit, t = 1, uint32(at.Unit), at.Value
	}
	ret := alloc(16)
	importDeviceRecord(d.handle, sp, sn, isSome, unit, t, fp, fn, addr(ret))
	runtime.KeepAlive(series)
	runtime.KeepAlive(values)
	runtime.KeepAlive(keep)
	return resultVoid(ret)
}

// A Point of a time-series.
type Point struct {
	At     *Time
	Values Fields
}

// RecordBatch records several points of one series (all or nothing).
func (d *Device) RecordBatch(series string, points []Point) error {
	sp, sn := strArg(series)
	// point: option<time> (24 bytes) then fields (8): 32 bytes each.
	b := alloc(uint32(32 * len(points)))
	keep := make([][]byte, len(points))
	for i, pt := range points {
		if pt.At != nil {
			b[32*i] = 1
			b[32*i+8] = byte(pt.At.Unit)
			put64(b, 32*i+16, pt.At.Value)
		}
		fp, fn, k := fieldsArg(pt.Values)
		keep[i] = k
		put32(b, 32*i+24, fp)
		put32(b, 32*i+28, fn)
	}
	pp, pn := addr(b), uint32(len(points))
	if pn == 0 {
		pp = 8
	}
	ret := alloc(16)
	importDeviceRecordBatch(d.handle, sp, sn, pp, pn, addr(ret))
	runtime.KeepAlive(series)
	runtime.KeepAlive(points)
	runtime.KeepAlive(keep)
	return resultVoid(ret)
}

// Alert raises an alert declared in the model.
func (d *Device) Alert(name string, severity Severity, values ...Field) error {
	np, nn := strArg(name)
	fp, fn, keep := fieldsArg(values)
	ret := alloc(16)
	importDeviceAlert(d.handle, np, nn, uint32(severity), fp, fn, addr(ret))
	runtime.KeepAlive(name)
	runtime.KeepAlive(values)
	runtime.KeepAlive(keep)
	return resultVoid(ret)
}

// StorageGet is the value stored under key; ok is false if there is none.
func StorageGet(key string) (value []byte, ok bool, err error) {
	kp, kn := strArg(key)
	ret := alloc(16)
	importStorageGet(kp, kn, addr(ret))
	runtime.KeepAlive(key)
	p := addr(ret)
	if ret[0] != 0 {
		return nil, false, loadError(p + 4)
	}
	if ret[4] == 0 {
		return nil, false, nil
	}
	return loadBytes(u32(p+8), u32(p+12)), true, nil
}

// StorageSet stores value under key; durable when it returns.
func StorageSet(key string, value []byte) error {
	kp, kn := strArg(key)
	vp, vn := bytesArg(value)
	ret := alloc(16)
	importStorageSet(kp, kn, vp, vn, addr(ret))
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	return resultVoid(ret)
}

// StorageDelete removes key.
func StorageDelete(key string) error {
	kp, kn := strArg(key)
	ret := alloc(16)
	importStorageDelete(kp, kn, addr(ret))
	runtime.KeepAlive(key)
	return resultVoid(ret)
}

// StorageKeys lists the keys that start with prefix, in byte order.
func StorageKeys(prefix string) ([]string, error) {
	pp, pn := strArg(prefix)
	ret := alloc(16)
	importStorageKeys(pp, pn, addr(ret))
	runtime.KeepAlive(prefix)
	p := addr(ret)
	if ret[0] != 0 {
		return nil, loadError(p + 4)
	}
	list, n := u32(p+4), u32(p+8)
	keys := make([]string, n)
	for i := range keys {
		at := list + 8*uint32(i)
		keys[i] = loadString(u32(at), u32(at+4))
	}
	return keys, nil
}

// Level of a log line.
type Level uint8

const (
	Trace Level = iota
	Debug
	InfoLevel
	WarnLevel
	ErrorLevel
)

// Log writes a line to the app's log.
func Log(level Level, message string) {
	p, n := strArg(message)
	importLog(uint32(level), p, n)
	runtime.KeepAlive(message)
}

// Infof logs a formatted `info` line.
func Infof(format string, args ...any) { Log(InfoLevel, fmt.Sprintf(format, args...)) }

// Warnf logs a formatted `warn` line.
func Warnf(format string, args ...any) { Log(WarnLevel, fmt.Sprintf(format, args...)) }

// Errorf logs a formatted `error` line.
func Errorf(format string, args ...any) { Log(ErrorLevel, fmt.Sprintf(format, args...)) }

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
