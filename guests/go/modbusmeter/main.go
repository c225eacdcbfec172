// The modbus-meter example app in Go (examples/modbus-meter): the same
// behaviour as guests/rust/examples/modbus-meter, value for value.
//
// Every tick it reads an energy meter over Modbus TCP (voltage with its scale
// factor, power and energy as 32-bit values across two registers, in the
// config's word order), records an `energy` point and reports the same
// values; a desired `power_limit` is written to holding register 10.
package main

import (
	"fmt"
	"math"

	wg "wasmgate.example/guests/go/wasmgate"
)

func init() { wg.Register(newMeter) }

// main is not called: the gateway calls the exports.
func main() {}

const powerLimitRegister = 10

type meter struct {
	unit  *wg.ModbusUnit
	order wg.WordOrder
}

func newMeter(config wg.Config, _ []byte) (wg.App, error) {
	endpoint, ok := config.Get("endpoint")
	if !ok {
		return nil, fmt.Errorf("config key endpoint: the meter's tcp://host:port is needed")
	}
	unit, err := config.Uint64("unit", 1)
	if err != nil || unit > 255 {
		return nil, fmt.Errorf("config key unit: %v", unit)
	}
	order := wg.HighFirst
	switch o, _ := config.Get("word_order"); o {
	case "", "high-first":
	case "low-first":
		order = wg.LowFirst
	default:
		return nil, fmt.Errorf("config key word_order: %q is not high-first or low-first", o)
	}
	wg.Infof("meter at %s unit %d (Go)", endpoint, unit)
	return &meter{unit: wg.NewModbusUnit(endpoint, uint8(unit)), order: order}, nil
}

func (m *meter) Save() []byte { return nil }

func (m *meter) OnTick(uint64) {
	words, err := m.unit.ReadInputRegisters(0, 2)
	if err == nil && len(words) != 2 {
		err = fmt.Errorf("a short answer")
	}
	var power, energy uint32
	if err == nil {
		power, err = m.unit.ReadInputU32(2, m.order)
	}
	if err == nil {
		energy, err = m.unit.ReadInputU32(4, m.order)
	}
	if err != nil {
		wg.Warnf("meter read failed: %v", err)
		return
	}
	voltage := float64(words[0]) * math.Pow(10, float64(int16(words[1])))
	values := []wg.Field{
		wg.F("voltage", wg.Number(voltage)),
		wg.F("power", wg.Int(int32(power))),
		wg.F("energy_kwh", wg.Number(float64(energy)/1000.0)),
	}
	device := wg.ThisDevice()
	if err := device.Record("energy", nil, values...); err != nil {
		wg.Warnf("record refused: %v", err)
	}
	if err := device.Report(values...); err != nil {
		wg.Warnf("report refused: %v", err)
	}
}

func (m *meter) OnDesired(_ string, changes wg.Fields) error {
	for _, change := range changes {
		percent, ok := change.Value.(wg.Int)
		if change.Name != "power_limit" || !ok || percent < 0 || percent > 100 {
			return fmt.Errorf("cannot apply %s", change.Name)
		}
		if err := m.unit.WriteRegister(powerLimitRegister, uint16(percent)); err != nil {
			return fmt.Errorf("the meter refused it (%s): %v", err.(*wg.IoError).Kind, err)
		}
		wg.Infof("power limit set to %d %%", percent)
	}
	return wg.ThisDevice().Report(changes...)
}

func (m *meter) OnAction(_, name string, _ wg.Value) (wg.Value, error) {
	return nil, fmt.Errorf("unknown action %s", name)
}
