"""The embedded default: moto, the provider simulator and the event-source emulator."""
