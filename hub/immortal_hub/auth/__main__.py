from immortal_hub.auth.cli import app

app()
