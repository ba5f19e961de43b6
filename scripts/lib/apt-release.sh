# shellcheck shell=bash
# apt for another Debian release than this machine's, without touching this machine's apt
# state: a private sources list holding the URIs of /etc/apt (one-line and deb822 files,
# enabled entries only) with this release's suites renamed to the other's (bookworm ->
# trixie, bookworm-security -> trixie-security, ...; other suites left out), and private
# lists and cache. No archive host is written anywhere: the machine's own sources decide.
#
#   . scripts/lib/apt-release.sh
#   apt_release_setup DIR SUITE       # writes DIR/sources.list, DIR/lists, DIR/cache
#   apt-get "${APT_RELEASE[@]}" update

apt_release_setup() {
  local dir=$1 target=$2 host f type rest opts key uri suite comps st line
  host=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$host" ] || { echo "apt-release: no VERSION_CODENAME in /etc/os-release" >&2; return 1; }
  mkdir -p "$dir/empty.d" "$dir/lists/partial" "$dir/cache/archives/partial"
  : > "$dir/sources.list"
  # _emit URI SUITE COMPONENTS SIGNED-BY
  _emit() {
    local new
    case $2 in
      "$host") new=$target ;;
      "$host"-*) new=$target-${2#"$host"-} ;;
      *) return 0 ;;
    esac
    echo "deb ${4:+[signed-by=$4] }$1 $new $3" >> "$dir/sources.list"
  }
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    while read -r type rest; do
      [ "$type" = deb ] || continue
      key=''
      if [[ $rest == \[* ]]; then
        opts=${rest%%]*} rest=${rest#*] }
        [[ $opts =~ signed-by=([^ \]]+) ]] && key=${BASH_REMATCH[1]}
      fi
      read -r uri suite comps <<< "$rest"
      _emit "$uri" "$suite" "$comps" "$key"
    done < "$f"
  done
  # _stanza: one deb822 stanza, in $st.
  _stanza() {
    local get_types s u
    _get() { sed -n "s/^$1:[[:space:]]*//Ip" <<< "$st" | head -n1; }
    grep -qiE '^Enabled:[[:space:]]*no' <<< "$st" && return 0
    get_types=" $(_get Types) "
    [[ $get_types == *" deb "* ]] || return 0
    for u in $(_get URIs); do
      for s in $(_get Suites); do _emit "$u" "$s" "$(_get Components)" "$(_get Signed-By)"; done
    done
  }
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    st=''
    while IFS= read -r line || [ -n "$line" ]; do
      case $line in
        \#*) ;;
        *[![:space:]]*) st+=$line$'\n' ;;
        *) [ -z "$st" ] || _stanza; st='' ;;
      esac
    done < "$f"
    [ -z "$st" ] || _stanza
  done
  [ -s "$dir/sources.list" ] || { echo "apt-release: no Debian suite of $host in /etc/apt to rename to $target" >&2; return 1; }
  APT_RELEASE=(-o Dir::Etc::sourcelist="$dir/sources.list" -o Dir::Etc::sourceparts="$dir/empty.d"
    -o Dir::State::Lists="$dir/lists" -o Dir::Cache="$dir/cache"
    -o Dir::Etc::preferencesparts="$dir/empty.d" -o Dir::Etc::preferences=/dev/null
    -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root
    # (Not this machine's installed packages either: apt never makes a version older than
    # an installed one the candidate, so Debian 12's libxen-dev would hide behind 13's.)
    -o Dir::State::status=/dev/null)
}
