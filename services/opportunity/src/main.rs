#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cascade_opportunity::run().await
}
