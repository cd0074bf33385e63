"""Local simulators of the chat platforms' wire protocols, and a harness that runs a real
gateway subprocess against them. Test and demo infrastructure, not product: adapters never
import from here."""
