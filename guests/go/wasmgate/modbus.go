package wasmgate

import (
	"fmt"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	modbus "wasmgate.example/guests/go/wit/imports/wasmgate_device_modbus"
	types "wasmgate.example/guests/go/wit/imports/wasmgate_device_types"
)

// IoError is why a device call failed: Kind is "denied", "invalid",
// "limit", "timeout", "closed" or "exception" (then Code is the Modbus
// exception code).
type IoError struct {
	Kind    string
	Message string
	Code    uint8
}

func (e *IoError) Error() string { return e.Kind + ": " + e.Message }

func ioErrorFromWIT(e types.IoError) *IoError {
	switch e.Tag() {
	case types.IoError_Denied:
		return &IoError{Kind: "denied", Message: e.Denied()}
	case types.IoError_Invalid:
		return &IoError{Kind: "invalid", Message: e.Invalid()}
	case types.IoError_Limit:
		return &IoError{Kind: "limit", Message: e.Limit()}
	case types.IoError_Timeout:
		return &IoError{Kind: "timeout", Message: e.Timeout()}
	case types.IoError_Closed:
		return &IoError{Kind: "closed", Message: e.Closed()}
	default:
		x := e.Exception()
		return &IoError{Kind: "exception", Message: x.Name, Code: x.Code}
	}
}

// WordOrder is how a 32-bit value lies across two registers.
type WordOrder uint8

const (
	// HighFirst: the first register holds the high 16 bits.
	HighFirst WordOrder = iota
	// LowFirst: the first register holds the low 16 bits ("word swapped").
	LowFirst
)

// U32From joins two registers into a 32-bit value.
func U32From(words [2]uint16, order WordOrder) uint32 {
	high, low := words[0], words[1]
	if order == LowFirst {
		high, low = words[1], words[0]
	}
	return uint32(high)<<16 | uint32(low)
}

// ModbusUnit is one unit on a granted Modbus endpoint (tcp://host:port).
type ModbusUnit struct {
	target modbus.Target
}

// NewModbusUnit addresses unit `unit` on `endpoint`, with the grant's timeout.
func NewModbusUnit(endpoint string, unit uint8) *ModbusUnit {
	return &ModbusUnit{target: modbus.Target{Endpoint: endpoint, Unit: unit, TimeoutMs: witTypes.None[uint32]()}}
}

// ReadInputRegisters reads `count` input registers from `address`.
func (u *ModbusUnit) ReadInputRegisters(address, count uint16) ([]uint16, error) {
	r := modbus.ReadInputRegisters(u.target, address, count)
	if r.IsErr() {
		return nil, ioErrorFromWIT(r.Err())
	}
	return r.Ok(), nil
}

// ReadHoldingRegisters reads `count` holding registers from `address`.
func (u *ModbusUnit) ReadHoldingRegisters(address, count uint16) ([]uint16, error) {
	r := modbus.ReadHoldingRegisters(u.target, address, count)
	if r.IsErr() {
		return nil, ioErrorFromWIT(r.Err())
	}
	return r.Ok(), nil
}

// ReadInputU32 reads a 32-bit value from two input registers.
func (u *ModbusUnit) ReadInputU32(address uint16, order WordOrder) (uint32, error) {
	words, err := u.ReadInputRegisters(address, 2)
	if err != nil {
		return 0, err
	}
	if len(words) != 2 {
		return 0, &IoError{Kind: "closed", Message: fmt.Sprintf("%d registers came back, not 2", len(words))}
	}
	return U32From([2]uint16{words[0], words[1]}, order), nil
}

// WriteRegister writes one holding register.
func (u *ModbusUnit) WriteRegister(address, value uint16) error {
	r := modbus.WriteRegisters(u.target, address, []uint16{value})
	if r.IsErr() {
		return ioErrorFromWIT(r.Err())
	}
	return nil
}

// WriteCoil switches one coil.
func (u *ModbusUnit) WriteCoil(address uint16, on bool) error {
	r := modbus.WriteCoils(u.target, address, []bool{on})
	if r.IsErr() {
		return ioErrorFromWIT(r.Err())
	}
	return nil
}
