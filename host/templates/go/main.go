// {{name}}: a wasmgate app in Go, made by `wasmgate new` as a place to start.
//
// A room thermostat: on every tick it heats the room while it is colder than
// the setpoint (and lets it cool otherwise), records a `climate` point and
// reports its attributes. The cloud may change `setpoint`; `save` hands the
// room's temperature to the next instance.
package main

import (
	"encoding/binary"
	"fmt"
	"math"

	wg "{{go_module}}/wasmgate"
)

func init() { wg.Register(newRoom) }

// main is not called: the gateway calls the exports.
func main() {}

type room struct {
	// The app's own device: one handle for the app's life.
	device      *wg.Device
	temperature float64
	setpoint    float64
	heating     bool
	ticks       int64
}

func round2(x float64) float64 { return math.Round(x*100.0) / 100.0 }

func newRoom(config wg.Config, previous []byte) (wg.App, error) {
	device := wg.ThisDevice()
	setpoint := 21.0
	if v, ok := device.Desired("setpoint"); ok {
		if x, ok := wg.AsFloat(v); ok {
			setpoint = x
		}
	}
	// The instance before this one handed over the room's temperature; a
	// first start takes it from the config.
	var temperature float64
	if len(previous) == 8 {
		temperature = math.Float64frombits(binary.LittleEndian.Uint64(previous))
	} else {
		var err error
		if temperature, err = config.Float("start_temperature", 18.0); err != nil {
			return nil, err
		}
	}
	wg.Infof("started on %s: %.2f °C, setpoint %.1f °C", device.ID(), temperature, setpoint)
	return &room{device: device, temperature: temperature, setpoint: setpoint}, nil
}

func (r *room) Save() []byte {
	return binary.LittleEndian.AppendUint64(nil, math.Float64bits(r.temperature))
}

func (r *room) OnTick(now uint64) {
	r.heating = r.temperature < r.setpoint
	delta := -0.25
	if r.heating {
		delta = 0.5
	}
	r.temperature = round2(r.temperature + delta)
	r.ticks++
	if err := r.device.Record("climate", nil, wg.F("temperature", wg.Number(r.temperature))); err != nil {
		wg.Warnf("record refused: %v", err)
	}
	if err := r.device.Report(
		wg.F("temperature", wg.Number(r.temperature)),
		wg.F("heating", wg.Bool(r.heating)),
		wg.F("setpoint", wg.Number(r.setpoint)),
		wg.F("ticks", wg.Int(r.ticks)),
	); err != nil {
		wg.Warnf("report refused: %v", err)
	}
	heating := "off"
	if r.heating {
		heating = "on"
	}
	wg.Infof("tick %d: %.2f °C, heating %s (setpoint %.1f °C)", r.ticks, r.temperature, heating, r.setpoint)
}

func (r *room) OnDesired(device string, changes wg.Fields) error {
	for _, change := range changes {
		setpoint, ok := wg.AsFloat(change.Value)
		if change.Name != "setpoint" || !ok {
			return fmt.Errorf("cannot apply %s", change.Name)
		}
		wg.Infof("setpoint changed %.1f -> %.1f °C", r.setpoint, setpoint)
		r.setpoint = setpoint
	}
	return nil
}

func (r *room) OnAction(device, name string, argument wg.Value) (wg.Value, error) {
	return nil, fmt.Errorf("no action %s", name)
}
