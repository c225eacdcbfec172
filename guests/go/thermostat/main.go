// The thermostat example app in Go: the same behaviour as
// guests/rust/thermostat, value for value.
//
// On every tick it reads a simulated room sensor, records a `climate` point
// (temperature, humidity), switches the heating with a little hysteresis and
// reports its attributes. The cloud can change the `setpoint` attribute and
// call the `reset` action, which zeroes the tick counter kept in storage.
package main

import (
	"encoding/binary"
	"fmt"
	"math"

	wg "wasmgate.example/guests/go/wasmgate"
)

// Storage key of the tick counter (u64, little endian).
const ticksKey = "ticks"

func init() { wg.Register(newThermostat) }

// main is not called: the gateway calls the exports.
func main() {}

// room: a room whose temperature drifts toward the outside when the heating
// is off and warms up when it is on; a deterministic pseudo-random wobble on top.
type room struct {
	temperature float64
	seed        uint64
	step        uint64
}

func (r *room) next(heating bool) (float64, float64) {
	// xorshift64: deterministic, no imports needed.
	r.seed ^= r.seed << 13
	r.seed ^= r.seed >> 7
	r.seed ^= r.seed << 17
	noise := float64(r.seed%1000)/1000.0 - 0.5
	r.step++
	delta := -0.25
	if heating {
		delta = 0.4
	}
	r.temperature += delta + noise*0.1
	humidity := 45.0 + 8.0*math.Sin(float64(r.step)/10.0) + noise
	return round2(r.temperature), round2(humidity)
}

func round2(x float64) float64 { return math.Round(x*100.0) / 100.0 }

type thermostat struct {
	device     *wg.Device
	sensor     room
	setpoint   float64
	heating    bool
	ticks      uint64
	overheatAt float64
}

func loadTicks() uint64 {
	bytes, ok, err := wg.StorageGet(ticksKey)
	if err != nil || !ok || len(bytes) != 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(bytes)
}

func u64Bytes(n uint64) []byte { return binary.LittleEndian.AppendUint64(nil, n) }

func newThermostat(config wg.Config, previous []byte) (wg.App, error) {
	device := wg.ThisDevice()
	setpoint := 21.0
	if v, ok := device.Desired("setpoint"); ok {
		if x, ok := wg.AsFloat(v); ok {
			setpoint = x
		}
	}
	// A hot swap hands over the room temperature; otherwise start from config.
	var temperature float64
	if len(previous) == 8 {
		temperature = math.Float64frombits(binary.LittleEndian.Uint64(previous))
	} else {
		var err error
		if temperature, err = config.Float("start_temperature", 18.0); err != nil {
			return nil, err
		}
	}
	seed, err := config.Uint64("seed", 0x5eed)
	if err != nil {
		return nil, err
	}
	overheatAt, err := config.Float("overheat_at", 28.0)
	if err != nil {
		return nil, err
	}
	t := &thermostat{
		device:     device,
		sensor:     room{temperature: temperature, seed: max(seed, 1)},
		setpoint:   setpoint,
		ticks:      loadTicks(),
		overheatAt: overheatAt,
	}
	wg.Infof("thermostat on %s: setpoint %.1f °C, %d ticks so far", device.ID(), t.setpoint, t.ticks)
	return t, nil
}

func (t *thermostat) Save() []byte {
	return binary.LittleEndian.AppendUint64(nil, math.Float64bits(t.sensor.temperature))
}

func (t *thermostat) OnTick(now uint64) {
	temperature, humidity := t.sensor.next(t.heating)
	// Hysteresis of half a degree either side of the setpoint.
	if temperature < t.setpoint-0.5 {
		t.heating = true
	} else if temperature > t.setpoint+0.5 {
		t.heating = false
	}
	t.ticks++
	if err := wg.StorageSet(ticksKey, u64Bytes(t.ticks)); err != nil {
		wg.Warnf("could not store the tick counter: %v", err)
	}
	if err := t.device.Record("climate", nil,
		wg.F("temperature", wg.Number(temperature)),
		wg.F("humidity", wg.Number(humidity)),
	); err != nil {
		wg.Warnf("record refused: %v", err)
	}
	if err := t.device.Report(
		wg.F("temperature", wg.Number(temperature)),
		wg.F("heating", wg.Bool(t.heating)),
		wg.F("setpoint", wg.Number(t.setpoint)),
		wg.F("ticks", wg.Int(int64(t.ticks))),
	); err != nil {
		wg.Warnf("report refused: %v", err)
	}
	if temperature > t.overheatAt {
		if err := t.device.Alert("overheat", wg.Warning, wg.F("temperature", wg.Number(temperature))); err != nil {
			wg.Warnf("alert refused: %v", err)
		}
	}
	heating := "off"
	if t.heating {
		heating = "on"
	}
	wg.Infof("tick %d: %.2f °C, %.1f %% rh, heating %s (setpoint %.1f °C)",
		t.ticks, temperature, humidity, heating, t.setpoint)
}

func (t *thermostat) OnDesired(device string, changes wg.Fields) error {
	for _, change := range changes {
		setpoint, ok := wg.AsFloat(change.Value)
		if change.Name != "setpoint" || !ok {
			return fmt.Errorf("cannot apply %s", change.Name)
		}
		wg.Infof("setpoint changed %.1f -> %.1f °C", t.setpoint, setpoint)
		t.setpoint = setpoint
	}
	return nil
}

func (t *thermostat) OnAction(device, name string, argument wg.Value) (wg.Value, error) {
	if name != "reset" {
		return nil, fmt.Errorf("unknown action %s", name)
	}
	before := t.ticks
	t.ticks = 0
	if err := wg.StorageSet(ticksKey, u64Bytes(0)); err != nil {
		return nil, fmt.Errorf("%s", err.(*wg.Error).Message)
	}
	wg.Infof("reset: tick counter was %d", before)
	return wg.Int(int64(before)), nil
}
