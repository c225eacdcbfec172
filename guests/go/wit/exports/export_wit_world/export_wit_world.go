// Package export_wit_world is the one package of the `app` world's Go
// bindings that wit-bindgen leaves to the app: the generated
// `//go:wasmexport` functions (package wit/exports/wit_exports, generated
// into out/bindings by guests/build) call the five functions below by this
// import path. They hand each call to the World that package wasmgate
// installs, so that an app implements wasmgate.App and never sees the
// generated types. This package lives here, in the guest's module, while
// the rest of wasmgate.example/guests/go/wit is the generated module that
// go.mod replaces with out/bindings.
package export_wit_world

import (
	witTypes "go.bytecodealliance.org/pkg/wit/types"
	"wasmgate.example/guests/go/wit/imports/wasmgate_device_types"
)

// Value is the WIT `value` as the bindings generate it.
type Value = wasmgate_device_types.Value

// World is the `app` world's exports, in the generated types.
type World interface {
	Init(config []witTypes.Tuple2[string, string], previous witTypes.Option[[]uint8]) witTypes.Result[witTypes.Unit, string]
	Save() witTypes.Option[[]uint8]
	OnTick(now uint64)
	OnDesired(device string, changes []witTypes.Tuple2[string, Value]) witTypes.Result[witTypes.Unit, string]
	OnAction(device string, name string, argument witTypes.Option[Value]) witTypes.Result[witTypes.Option[Value], string]
}

// Impl receives the calls; package wasmgate sets it in its init function,
// which runs before the host can call any export.
var Impl World

func Init(config []witTypes.Tuple2[string, string], previous witTypes.Option[[]uint8]) witTypes.Result[witTypes.Unit, string] {
	return Impl.Init(config, previous)
}

func Save() witTypes.Option[[]uint8] { return Impl.Save() }

func OnTick(now uint64) { Impl.OnTick(now) }

func OnDesired(device string, changes []witTypes.Tuple2[string, Value]) witTypes.Result[witTypes.Unit, string] {
	return Impl.OnDesired(device, changes)
}

func OnAction(device string, name string, argument witTypes.Option[Value]) witTypes.Result[witTypes.Option[Value], string] {
	return Impl.OnAction(device, name, argument)
}
