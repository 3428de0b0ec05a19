package sqlstore

// Open stands for the real store.
func Open() string { return "db" }
