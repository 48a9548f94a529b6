#[celeriac::task(name = "t", max_retries = "five")]
async fn t() {}

fn main() {}
