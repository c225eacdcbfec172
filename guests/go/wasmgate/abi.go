// The canonical ABI of the wasmgate:device@0.1.0 `app` world for Go
// (GOOS=wasip1 GOARCH=wasm), written by hand: wit-bindgen's Go generator
// needs its runtime package from the Go module proxy, which a gateway
// build cannot reach. Apps use the API in wasmgate.go and never see this.
//
// Memory rules. Go's heap does not move, so Go memory is handed to the host
// by address. Memory the host asks for (cabi_realloc: export arguments,
// import results) and memory holding export results stays reachable from
// `pinned` until the next export call starts, by which time the host has
// copied everything out of it.

package wasmgate

import (
	"encoding/binary"
	"math"
	"runtime"
	"strings"
	"unsafe"
)

var pinned [][]uint64

// alloc returns size bytes, 8-aligned, zeroed, kept alive until the next
// export call.
func alloc(size uint32) []byte {
	if size == 0 {
		return nil
	}
	words := make([]uint64, (size+7)/8)
	pinned = append(pinned, words)
	return unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), size)
}

// unpinAll forgets the allocations of the previous call. Call it at the
// start of each export, after its arguments have been copied into Go values.
func unpinAll(keep int) {
	pinned = pinned[len(pinned)-keep:]
}

//go:wasmexport cabi_realloc
func cabiRealloc(oldPtr, oldSize, align, newSize uint32) uint32 {
	if newSize == 0 {
		return align
	}
	b := alloc(newSize)
	if oldPtr != 0 {
		copy(b, mem(oldPtr, min(oldSize, newSize)))
	}
	return addr(b)
}

func addr(b []byte) uint32 {
	if len(b) == 0 {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(&b[0])))
}

// mem is the guest memory at [ptr, ptr+n).
func mem(ptr, n uint32) []byte {
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(ptr))), n)
}

func u8(ptr uint32) uint8               { return mem(ptr, 1)[0] }
func u32(ptr uint32) uint32             { return binary.LittleEndian.Uint32(mem(ptr, 4)) }
func u64(ptr uint32) uint64             { return binary.LittleEndian.Uint64(mem(ptr, 8)) }
func put32(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }
func put64(b []byte, off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }

// loadString copies the string at (ptr, len) out of guest memory.
func loadString(ptr, n uint32) string {
	return strings.Clone(unsafe.String((*byte)(unsafe.Pointer(uintptr(ptr))), n))
}

func loadBytes(ptr, n uint32) []byte {
	return append([]byte(nil), mem(ptr, n)...)
}

// strArg: a Go string as (ptr, len) for an import call. The caller keeps
// the string alive across the call (runtime.KeepAlive).
func strArg(s string) (uint32, uint32) {
	if len(s) == 0 {
		return 1, 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s)))), uint32(len(s))
}

func bytesArg(b []byte) (uint32, uint32) {
	if len(b) == 0 {
		return 1, 0
	}
	return uint32(uintptr(unsafe.Pointer(&b[0]))), uint32(len(b))
}

// Value tags, in the order of the WIT variant.
const (
	tagBoolean = iota
	tagInteger
	tagNumber
	tagText
	tagBytes
)

// storeValue writes a `value` (16 bytes: tag, payload at +8) at b[off:].
func storeValue(b []byte, off int, v Value) {
	switch v := v.(type) {
	case Bool:
		b[off] = tagBoolean
		if v {
			b[off+8] = 1
		}
	case Int:
		b[off] = tagInteger
		put64(b, off+8, uint64(v))
	case Number:
		b[off] = tagNumber
		put64(b, off+8, math.Float64bits(float64(v)))
	case Text:
		b[off] = tagText
		p, n := strArg(string(v))
		put32(b, off+8, p)
		put32(b, off+12, n)
	case Bytes:
		b[off] = tagBytes
		p, n := bytesArg(v)
		put32(b, off+8, p)
		put32(b, off+12, n)
	default:
		panic("wasmgate: a Value must be Bool, Int, Number, Text or Bytes")
	}
}

// loadValue reads a `value` at ptr.
func loadValue(ptr uint32) Value {
	switch u8(ptr) {
	case tagBoolean:
		return Bool(u8(ptr+8) != 0)
	case tagInteger:
		return Int(int64(u64(ptr + 8)))
	case tagNumber:
		return Number(math.Float64frombits(u64(ptr + 8)))
	case tagText:
		return Text(loadString(u32(ptr+8), u32(ptr+12)))
	default:
		return Bytes(loadBytes(u32(ptr+8), u32(ptr+12)))
	}
}

// fieldsArg lays out `fields` (list<tuple<string, value>>, 24 bytes each).
// The returned slice keeps the strings' memory reachable.
func fieldsArg(fields []Field) (uint32, uint32, []byte) {
	b := alloc(uint32(24 * len(fields)))
	for i, f := range fields {
		p, n := strArg(f.Name)
		put32(b, 24*i, p)
		put32(b, 24*i+4, n)
		storeValue(b, 24*i+8, f.Value)
	}
	if len(fields) == 0 {
		return 8, 0, nil
	}
	return addr(b), uint32(len(fields)), b
}

func loadFields(ptr, n uint32) Fields {
	fields := make(Fields, n)
	for i := range fields {
		at := ptr + 24*uint32(i)
		fields[i] = Field{Name: loadString(u32(at), u32(at+4)), Value: loadValue(at + 8)}
	}
	return fields
}

// loadError reads an `error` (tag u8, string at +4) at ptr.
func loadError(ptr uint32) *Error {
	return &Error{Kind: ErrorKind(u8(ptr)), Message: loadString(u32(ptr+4), u32(ptr+8))}
}

// resultVoid reads a result<_, error> (16 bytes) at ptr.
func resultVoid(ret []byte) error {
	p := addr(ret)
	if u8(p) == 0 {
		return nil
	}
	return loadError(p + 4)
}

// Imports.

//go:wasmimport wasmgate:device/device@0.1.0 this-device
func importThisDevice() uint32

//go:wasmimport wasmgate:device/device@0.1.0 [resource-drop]device
func importDropDevice(handle uint32)

//go:wasmimport wasmgate:device/device@0.1.0 [method]device.id
func importDeviceID(self uint32, ret uint32)

//go:wasmimport wasmgate:device/device@0.1.0 [method]device.report
func importDeviceReport(self, fieldsPtr, fieldsLen, ret uint32)

//go:wasmimport wasmgate:device/device@0.1.0 [method]device.reported
func importDeviceReported(self, namePtr, nameLen, ret uint32)

//go:wasmimport wasmgate:device/device@0.1.0 [method]device.desired
func importDeviceDesired(self, namePtr, nameLen, ret uint32)

//go:wasmimport wasmgate:device/device@0.1.0 [method]device.record
func importDeviceRecord(self, seriesPtr, seriesLen, atIsSome, atTag uint32, atValue uint64, fieldsPtr, fieldsLen, ret uint32)

//go:wasmimport wasmgate:device/device@0.1.0 [method]device.record-batch
func importDeviceRecordBatch(self, seriesPtr, seriesLen, pointsPtr, pointsLen, ret uint32)

//go:wasmimport wasmgate:device/device@0.1.0 [method]device.alert
func importDeviceAlert(self, namePtr, nameLen, severity, fieldsPtr, fieldsLen, ret uint32)

//go:wasmimport wasmgate:device/storage@0.1.0 get
func importStorageGet(keyPtr, keyLen, ret uint32)

//go:wasmimport wasmgate:device/storage@0.1.0 set
func importStorageSet(keyPtr, keyLen, valuePtr, valueLen, ret uint32)

//go:wasmimport wasmgate:device/storage@0.1.0 delete
func importStorageDelete(keyPtr, keyLen, ret uint32)

//go:wasmimport wasmgate:device/storage@0.1.0 keys
func importStorageKeys(prefixPtr, prefixLen, ret uint32)

//go:wasmimport wasmgate:device/log@0.1.0 log
func importLog(level, msgPtr, msgLen uint32)

// Exports. Each one first copies its arguments into Go values, then lets go
// of what the previous call handed to the host.

var current App

//go:wasmexport init
func exportInit(configPtr, configLen, prevIsSome, prevPtr, prevLen uint32) uint32 {
	config := make(Config, configLen)
	for i := range config {
		at := configPtr + 16*uint32(i)
		config[i] = [2]string{loadString(u32(at), u32(at+4)), loadString(u32(at+8), u32(at+12))}
	}
	var previous []byte
	if prevIsSome != 0 {
		previous = loadBytes(prevPtr, prevLen)
	}
	unpinAll(0)
	checkAdapterArena()
	if newApp == nil {
		return resultString("wasmgate: the app did not call wasmgate.Register")
	}
	app, err := newApp(config, previous)
	if err != nil {
		return resultString(err.Error())
	}
	current = app
	return resultString("")
}

// resultString lays out result<_, string>: ok if msg is "", else err(msg).
func resultString(msg string) uint32 {
	ret := alloc(12)
	if msg != "" {
		ret[0] = 1
		text := alloc(uint32(len(msg)))
		copy(text, msg)
		put32(ret, 4, addr(text))
		put32(ret, 8, uint32(len(msg)))
	}
	return addr(ret)
}

//go:wasmexport save
func exportSave() uint32 {
	unpinAll(0)
	ret := alloc(12)
	if state := current.Save(); state != nil {
		data := alloc(uint32(len(state)))
		copy(data, state)
		ret[0] = 1
		put32(ret, 4, addr(data))
		put32(ret, 8, uint32(len(state)))
		if len(state) == 0 {
			put32(ret, 4, 1)
		}
	}
	return addr(ret)
}

//go:wasmexport on-tick
func exportOnTick(now uint64) {
	unpinAll(0)
	current.OnTick(now)
}

//go:wasmexport on-desired
func exportOnDesired(devicePtr, deviceLen, changesPtr, changesLen uint32) uint32 {
	device := loadString(devicePtr, deviceLen)
	changes := loadFields(changesPtr, changesLen)
	unpinAll(0)
	if err := current.OnDesired(device, changes); err != nil {
		return resultString(err.Error())
	}
	return resultString("")
}

//go:wasmexport on-action
func exportOnAction(devicePtr, deviceLen, namePtr, nameLen, argIsSome, argTag uint32, argPayload uint64, argLen uint32) uint32 {
	device := loadString(devicePtr, deviceLen)
	name := loadString(namePtr, nameLen)
	var argument Value
	if argIsSome != 0 {
		switch argTag {
		case tagBoolean:
			argument = Bool(argPayload != 0)
		case tagInteger:
			argument = Int(int64(argPayload))
		case tagNumber:
			argument = Number(math.Float64frombits(argPayload))
		case tagText:
			argument = Text(loadString(uint32(argPayload), argLen))
		default:
			argument = Bytes(loadBytes(uint32(argPayload), argLen))
		}
	}
	unpinAll(0)
	result, err := current.OnAction(device, name, argument)
	// result<option<value>, string>: tag u8, payload at +8 (32 bytes).
	ret := alloc(32)
	if err != nil {
		msg := err.Error()
		text := alloc(uint32(len(msg)))
		copy(text, msg)
		ret[0] = 1
		put32(ret, 8, addr(text))
		put32(ret, 12, uint32(len(msg)))
		return addr(ret)
	}
	if result != nil {
		ret[8] = 1
		storeValue(ret, 16, result)
		// Text and bytes results point into Go memory: keep it reachable.
		switch v := result.(type) {
		case Text:
			text := alloc(uint32(len(v)))
			copy(text, v)
			if len(v) > 0 {
				put32(ret, 24, addr(text))
			}
		case Bytes:
			data := alloc(uint32(len(v)))
			copy(data, v)
			if len(v) > 0 {
				put32(ret, 24, addr(data))
			}
		}
	}
	return addr(ret)
}

var _ = runtime.KeepAlive
