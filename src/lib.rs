pub fn probe() {}
