module wasmgate.example/guests/go

go 1.24
