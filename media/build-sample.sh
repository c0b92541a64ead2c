#!/usr/bin/env bash
# Build the bundled HLS samples with ffmpeg.
#
# sample/   30 s, three video renditions and one alternate audio rendition:
#           v360 (MPEG-TS, AES-128 encrypted), v240 (fMP4 with EXT-X-MAP),
#           v180 (MPEG-TS, clear) and audio (AAC in MPEG-TS), 2 s segments.
# trailer/  8 s, one muxed MPEG-TS rendition, 2 s segments.
#
# The AES-128 key is fixed so that rebuilding gives byte-comparable output.
# It protects a test pattern and is not a secret.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
duration=30
segment=2
rate=25
gop=$((rate * segment))

video_in=(-f lavfi -i "testsrc2=size=640x360:rate=${rate}:duration=${duration}")
audio_in=(-f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=48000:duration=${duration}")
h264=(-c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p
      -g "$gop" -keyint_min "$gop" -sc_threshold 0 -bitexact)
hls=(-f hls -hls_time "$segment" -hls_playlist_type vod -hls_list_size 0)

out="$here/sample"
rm -rf "$out"
mkdir -p "$out/v360" "$out/v240" "$out/v180" "$out/audio" "$out/keys"

printf '\x5e\x0b\x52\x1c\x08\x2a\x4f\x9d\x31\xc7\x6a\x10\xe4\x77\x93\xb2' \
    > "$out/keys/v360.key"
keyinfo=$(mktemp)
trap 'rm -f "$keyinfo"' EXIT
printf '%s\n%s\n%s\n' "../keys/v360.key" "$out/keys/v360.key" \
    "00000000000000000000000000000001" > "$keyinfo"

ffmpeg -hide_banner -loglevel error -y "${video_in[@]}" -an "${h264[@]}" \
    -vf scale=640:360 -b:v 300k -maxrate 330k -bufsize 600k \
    "${hls[@]}" -hls_key_info_file "$keyinfo" \
    -hls_segment_filename "$out/v360/seg_%03d.ts" "$out/v360/index.m3u8"

ffmpeg -hide_banner -loglevel error -y "${video_in[@]}" -an "${h264[@]}" \
    -vf scale=426:240 -b:v 160k -maxrate 180k -bufsize 320k \
    "${hls[@]}" -hls_segment_type fmp4 -hls_fmp4_init_filename init.mp4 \
    -hls_segment_filename "$out/v240/seg_%03d.m4s" "$out/v240/index.m3u8"

ffmpeg -hide_banner -loglevel error -y "${video_in[@]}" -an "${h264[@]}" \
    -vf scale=320:180 -b:v 90k -maxrate 100k -bufsize 180k \
    "${hls[@]}" -hls_segment_filename "$out/v180/seg_%03d.ts" \
    "$out/v180/index.m3u8"

ffmpeg -hide_banner -loglevel error -y "${audio_in[@]}" -vn \
    -c:a aac -b:a 64k -ac 2 "${hls[@]}" \
    -hls_segment_filename "$out/audio/seg_%03d.ts" "$out/audio/index.m3u8"

cat > "$out/master.m3u8" <<'M3U8'
#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="English",LANGUAGE="en",DEFAULT=YES,AUTOSELECT=YES,CHANNELS="2",URI="audio/index.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=420000,AVERAGE-BANDWIDTH=380000,RESOLUTION=640x360,FRAME-RATE=25.000,CODECS="avc1.4d401e,mp4a.40.2",AUDIO="aac"
v360/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=260000,AVERAGE-BANDWIDTH=230000,RESOLUTION=426x240,FRAME-RATE=25.000,CODECS="avc1.4d4015,mp4a.40.2",AUDIO="aac"
v240/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=180000,AVERAGE-BANDWIDTH=160000,RESOLUTION=320x180,FRAME-RATE=25.000,CODECS="avc1.4d400d,mp4a.40.2",AUDIO="aac"
v180/index.m3u8
M3U8

out="$here/trailer"
rm -rf "$out"
mkdir -p "$out"
ffmpeg -hide_banner -loglevel error -y \
    -f lavfi -i "testsrc=size=320x180:rate=${rate}:duration=8" \
    -f lavfi -i "sine=frequency=660:sample_rate=48000:duration=8" \
    "${h264[@]}" -b:v 100k -c:a aac -b:a 48k -ac 2 \
    "${hls[@]}" -hls_segment_filename "$out/seg_%03d.ts" "$out/index.m3u8"

cat > "$out/master.m3u8" <<'M3U8'
#EXTM3U
#EXT-X-STREAM-INF:BANDWIDTH=200000,RESOLUTION=320x180,CODECS="avc1.4d400d,mp4a.40.2"
index.m3u8
M3U8

du -sh "$here/sample" "$here/trailer"
