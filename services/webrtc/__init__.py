"""WebRTC for the browser ingress: offer checks, ICE address control, the paced outbound track."""
