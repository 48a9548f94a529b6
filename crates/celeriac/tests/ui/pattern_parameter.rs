#[celeriac::task(name = "t")]
async fn t((a, b): (u32, u32)) {}

fn main() {}
