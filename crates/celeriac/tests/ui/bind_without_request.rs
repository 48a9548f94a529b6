#[celeriac::task(name = "t", bind = true)]
async fn t(width: u32) {}

fn main() {}
