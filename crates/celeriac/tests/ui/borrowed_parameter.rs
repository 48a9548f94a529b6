#[celeriac::task(name = "t")]
async fn t(url: &str) {}

fn main() {}
