package wasmgate

// The memory of the WASI preview-1 adapter that turns this module into a
// component (its state and its stack), reserved in static data.
//
// The adapter allocates on its first call, inside the Go runtime's start,
// when Go's cabi_realloc cannot run yet. A page taken with memory.grow
// instead would be handed out again by Go's allocator, which assumes it
// alone grows memory, and the adapter's state would be overwritten after a
// few hundred calls. So `wasmgate-guest-tool new --adapter-arena` finds the
// marker below and gives the adapter a bump allocator over `mem`.
var adapterArena = struct {
	marker [16]byte
	size   uint32
	mem    [256 << 10]byte
}{
	marker: [16]byte{'w', 'a', 's', 'm', 'g', 'a', 't', 'e', '-', 'a', 'd', 'a', 'p', 't', 'e', 'r'},
	size:   256 << 10,
}

// checkAdapterArena reads the arena's header from an export, which keeps it
// in the binary (nothing else in Go refers to it).
func checkAdapterArena() {
	if adapterArena.size != uint32(len(adapterArena.mem)) {
		panic("wasmgate: the adapter arena's header was overwritten")
	}
}
