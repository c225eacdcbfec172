// The bus-gateway example app in Go (examples/busgateway): the same
// behaviour and log lines as guests/rust/examples/busgateway, so that the
// registration scenario can run against either build.
//
// The app reads a bus of simulated temperature sensors and registers each
// one, by its hardware id, as a device of its own (wasmgate.RegisterDevice).
// On the bus device: `scan` registers the sensors that are not registered,
// `unplug(hardware id)` unregisters one (wasmgate.UnregisterDevice). On each
// sensor: the writable `label`, and the `identify` action.
package main

import (
	"fmt"
	"math"
	"slices"
	"strings"

	wg "wasmgate.example/guests/go/wasmgate"
)

func init() { wg.Register(newBusGateway) }

// main is not called: the gateway calls the exports.
func main() {}

// A sensor on the bus and the device it was registered as (nil: not registered).
type sensor struct {
	hardwareID  string
	device      *wg.Device
	label       string
	temperature float64
	step        uint64
}

func (s *sensor) read() float64 {
	s.step++
	phase := 0.0
	for _, b := range []byte(s.hardwareID) {
		phase += float64(b)
	}
	s.temperature = 20.0 + 3.0*math.Sin((float64(s.step)+phase)/10.0)
	return math.Round(s.temperature*100.0) / 100.0
}

type busGateway struct {
	bus *wg.Device
	// In hardware id order, as the Rust build's map.
	sensors []*sensor
}

// scan registers every sensor on the bus that is not registered yet.
func (g *busGateway) scan() int {
	registered := 0
	for n, s := range g.sensors {
		if s.device != nil {
			continue
		}
		metadata := [][2]string{
			{"manufacturer", "Acme Sensors"},
			{"model_number", "TH-100"},
			{"serial_number", fmt.Sprintf("SN-%04d", 1000+n)},
		}
		device, err := wg.RegisterDevice(s.hardwareID, "sensor", metadata)
		if err != nil {
			wg.Warnf("sensor %s not registered: %v", s.hardwareID, err)
			continue
		}
		wg.Infof("sensor %s registered as %s", s.hardwareID, device.ID())
		s.device = device
		registered++
	}
	return registered
}

func (g *busGateway) byDevice(device string) *sensor {
	for _, s := range g.sensors {
		if s.device != nil && s.device.ID() == device {
			return s
		}
	}
	return nil
}

func (g *busGateway) byHardwareID(hardwareID string) *sensor {
	for _, s := range g.sensors {
		if s.hardwareID == hardwareID {
			return s
		}
	}
	return nil
}

func newBusGateway(config wg.Config, previous []byte) (wg.App, error) {
	count, err := config.Uint64("sensors", 4)
	if err != nil {
		return nil, err
	}
	g := &busGateway{bus: wg.ThisDevice()}
	for n := uint64(1); n <= count; n++ {
		id := fmt.Sprintf("th-%02d", n)
		g.sensors = append(g.sensors, &sensor{hardwareID: id, label: "sensor " + id, temperature: 20.0})
	}
	slices.SortFunc(g.sensors, func(a, b *sensor) int { return strings.Compare(a.hardwareID, b.hardwareID) })
	registered := g.scan()
	wg.Infof("bus scanned: %d sensors, %d registered", count, registered)
	return g, nil
}

func (g *busGateway) Save() []byte { return nil }

// maxReportsPerCall is the most reports the gateway takes in one ReportAll.
const maxReportsPerCall = 1000

func (g *busGateway) OnTick(now uint64) {
	online := int64(0)
	// The whole scan's reports go in one ReportAll: one step for the
	// gateway to store, however many sensors the bus has.
	reports := make([]wg.DeviceReport, 0, len(g.sensors)+1)
	for _, s := range g.sensors {
		value := s.read()
		if s.device == nil {
			continue
		}
		online++
		if err := s.device.Record("temperature", nil, wg.F("celsius", wg.Number(value))); err != nil {
			wg.Warnf("%s: record refused: %s", s.hardwareID, err.(*wg.Error).Message)
		}
		reports = append(reports, wg.DeviceReport{Device: s.device, Attributes: []wg.Field{
			wg.F("temperature", wg.Number(value)), wg.F("label", wg.Text(s.label)),
		}})
	}
	reports = append(reports, wg.DeviceReport{Device: g.bus, Attributes: []wg.Field{wg.F("sensors", wg.Int(online))}})
	for len(reports) > 0 {
		n := min(len(reports), maxReportsPerCall)
		if err := wg.ReportAll(reports[:n]); err != nil {
			wg.Warnf("bus scan's reports refused: %s", err.(*wg.Error).Message)
		}
		reports = reports[n:]
	}
}

func (g *busGateway) OnDesired(device string, changes wg.Fields) error {
	s := g.byDevice(device)
	if s == nil {
		return fmt.Errorf("%s is not a sensor of this bus", device)
	}
	for _, change := range changes {
		label, ok := change.Value.(wg.Text)
		if change.Name != "label" || !ok {
			return fmt.Errorf("%s cannot be set", change.Name)
		}
		wg.Infof("%s (%s) label: %s", s.hardwareID, device, label)
		s.label = string(label)
	}
	return nil
}

func (g *busGateway) OnAction(device, name string, argument wg.Value) (wg.Value, error) {
	onBus := device == g.bus.ID()
	hardwareID, isText := argument.(wg.Text)
	switch {
	case name == "scan" && onBus:
		return wg.Int(int64(g.scan())), nil
	case name == "unplug" && isText && onBus:
		s := g.byHardwareID(string(hardwareID))
		if s == nil {
			return nil, fmt.Errorf("no sensor %s on the bus", hardwareID)
		}
		if err := wg.UnregisterDevice(string(hardwareID)); err != nil {
			return nil, fmt.Errorf("%s", err.(*wg.Error).Message)
		}
		if s.device != nil {
			s.device.Close()
			s.device = nil
		}
		wg.Infof("sensor %s unplugged", hardwareID)
		return hardwareID, nil
	case name == "identify":
		s := g.byDevice(device)
		if s == nil {
			return nil, fmt.Errorf("%s is not a sensor of this bus", device)
		}
		wg.Infof("%s (%s) identifies itself", s.hardwareID, device)
		return wg.Text(s.hardwareID), nil
	}
	return nil, fmt.Errorf("unknown action %s on %s", name, device)
}
