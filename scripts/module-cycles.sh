#!/usr/bin/env bash
# Checks that no `use` cycle exists between the top-level modules of each workspace crate:
# if `a` refers to `crate::b` (directly, through a `use crate::{b, ..}` group, through
# `super::b` from a file of `a`, or through a name the crate root re-exports from `b`), and
# `b` refers back to `a` by any chain, that is a cycle, and the layering it hides is reported
# with the line behind every edge of it.
#
#   scripts/module-cycles.sh                 # every crate; exits 1 if any has a cycle
#   scripts/module-cycles.sh controlplane    # only the named crates (directory names)
#   scripts/module-cycles.sh --edges         # also print each crate's module graph
#
# It reads the source text, not the compiler's view: comments and string literals are
# skipped, test code counts like any other code, and `super::` inside an inline module is
# resolved as if written at the top of its file. A re-export in the crate root
# (`pub use b::Thing;`) is followed back to `b`.
set -euo pipefail
cd "$(dirname "$0")/.."

exec perl -w - "$@" <<'PERL'
use strict;

my $show_edges = 0;
my @only;
for my $arg (@ARGV) {
    if ($arg eq '--edges') { $show_edges = 1 }
    elsif ($arg =~ /^-/) { die "unknown option $arg\n" }
    else { push @only, $arg }
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or die "cannot read $path: $!\n";
    local $/;
    my $text = <$fh>;
    close $fh;
    return $text;
}

# Source text with comments and string/char literals blanked out, newlines kept so line
# numbers still match the file.
sub code_only {
    my ($text) = @_;
    my $out = '';
    my $len = length $text;
    my $i = 0;
    while ($i < $len) {
        my $rest = substr($text, $i, 3);
        if ($rest =~ m{^//}) {
            my $end = index($text, "\n", $i);
            $end = $len if $end < 0;
            $i = $end;
        } elsif ($rest =~ m{^/\*}) {
            my $depth = 0;
            while ($i < $len) {
                my $two = substr($text, $i, 2);
                if ($two eq '/*') { $depth++; $i += 2; next }
                if ($two eq '*/') { $depth--; $i += 2; last if $depth == 0; next }
                $out .= "\n" if substr($text, $i, 1) eq "\n";
                $i++;
            }
        } elsif (substr($text, $i) =~ /^(b?r(#*)")/) {
            my ($open, $hashes) = ($1, $2);
            my $close = '"' . $hashes;
            my $end = index($text, $close, $i + length $open);
            $end = $len if $end < 0;
            my $skipped = substr($text, $i, $end + length($close) - $i);
            $out .= "\n" x ($skipped =~ tr/\n//);
            $out .= '""';
            $i = $end + length $close;
        } elsif (substr($text, $i, 1) eq '"') {
            my $j = $i + 1;
            while ($j < $len) {
                my $c = substr($text, $j, 1);
                if ($c eq '\\') { $j += 2; next }
                last if $c eq '"';
                $j++;
            }
            my $skipped = substr($text, $i, $j + 1 - $i);
            $out .= "\n" x ($skipped =~ tr/\n//);
            $out .= '""';
            $i = $j + 1;
        } elsif (substr($text, $i) =~ /^('(?:\\.|[^'\\])')/) {
            # A char literal; a lifetime (`'a`) has no closing quote and is kept.
            $out .= "' '";
            $i += length $1;
        } else {
            $out .= substr($text, $i, 1);
            $i++;
        }
    }
    return $out;
}

# The names at the top level of a `{ .. }` use group starting at offset $at (just after `{`).
sub group_heads {
    my ($text, $at) = @_;
    my @heads;
    my $depth = 1;
    my $expect = 1;
    my $i = $at;
    while ($i < length $text && $depth > 0) {
        my $c = substr($text, $i, 1);
        if ($c eq '{') { $depth++ }
        elsif ($c eq '}') { $depth-- }
        elsif ($c eq ',' && $depth == 1) { $expect = 1 }
        elsif ($expect && $depth == 1 && substr($text, $i) =~ /^([A-Za-z_][A-Za-z0-9_]*)/) {
            push @heads, [$1, $i];
            $expect = 0;
            $i += length $1;
            next;
        }
        $i++;
    }
    return @heads;
}

sub line_of {
    my ($text, $offset) = @_;
    return 1 + (substr($text, 0, $offset) =~ tr/\n//);
}

# Every `.rs` file under $dir, recursively.
sub rust_files {
    my ($dir) = @_;
    my @files;
    opendir my $dh, $dir or return ();
    for my $entry (sort readdir $dh) {
        next if $entry =~ /^\./;
        my $path = "$dir/$entry";
        if (-d $path) { push @files, rust_files($path) }
        elsif ($entry =~ /\.rs$/) { push @files, $path }
    }
    closedir $dh;
    return @files;
}

# The crates of the workspace: each member's lib.rs and main.rs, and the root package's.
sub crates {
    my $manifest = slurp('Cargo.toml');
    my @dirs;
    if ($manifest =~ /^\s*members\s*=\s*\[(.*?)\]/ms) {
        @dirs = ($1 =~ /"([^"]+)"/g);
    }
    unshift @dirs, '.' if $manifest =~ /^\[package\]/m;
    my @crates;
    for my $dir (@dirs) {
        my $name = $dir eq '.' ? 'colony (root package)' : $dir;
        my $key = $dir eq '.' ? 'colony' : $dir;
        next if @only && !grep { $_ eq $key || $_ eq $dir } @only;
        for my $root (qw(lib main)) {
            my $file = "$dir/src/$root.rs";
            $file =~ s{^\./}{};
            push @crates, { name => "$name, $root.rs", src => ($dir eq '.' ? 'src' : "$dir/src"), root => $file }
                if -f $file;
        }
    }
    return @crates;
}

# Edges between the top-level modules of one crate: module => { module => [evidence..] }.
sub graph {
    my ($crate) = @_;
    my $src = $crate->{src};
    my $root_text = code_only(slurp($crate->{root}));
    my %modules = map { $_ => 1 } ($root_text =~ /^\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;/mg);

    # Names the root re-exports from a module: `pub use a::b::Thing;`, `pub use a::{X, y::Z as W};`.
    my %reexport;
    while ($root_text =~ /\bpub(?:\([^)]*\))?\s+use\s+(?:crate::|self::)?([A-Za-z_][A-Za-z0-9_]*)::([^;]*);/g) {
        my ($module, $tail) = ($1, $2);
        next unless $modules{$module};
        (my $flat = $tail) =~ s/\s+/ /g;
        # Each exported name is the last segment of a path, or the alias after `as`.
        for my $item (split /[{},]/, $flat) {
            $item =~ s/^\s+|\s+$//g;
            next if $item eq '' || $item eq 'self' || $item eq '*';
            my $name = $item =~ /\bas\s+([A-Za-z_][A-Za-z0-9_]*)$/ ? $1 : ($item =~ /([A-Za-z_][A-Za-z0-9_]*)$/)[0];
            $reexport{$name} = $module if defined $name;
        }
    }

    my %edges;
    for my $module (sort keys %modules) {
        my @files;
        push @files, "$src/$module.rs" if -f "$src/$module.rs";
        push @files, rust_files("$src/$module") if -d "$src/$module";
        for my $file (@files) {
            (my $rel = $file) =~ s{^\Q$src\E/}{};
            $rel =~ s{\.rs$}{};
            my @path = split m{/}, $rel;
            pop @path if $path[-1] eq 'mod';
            my $text = code_only(slurp($file));
            my $refer = sub {
                my ($name, $offset) = @_;
                my $target = $modules{$name} ? $name : $reexport{$name};
                return unless defined $target && $target ne $module;
                my $line = line_of($text, $offset);
                push @{ $edges{$module}{$target} }, "$file:$line";
            };
            # `crate::name`, and `crate::{a, b::c}` groups.
            while ($text =~ /(?<![A-Za-z0-9_\$])crate\s*::\s*(\{|[A-Za-z_][A-Za-z0-9_]*)/g) {
                my ($head, $end) = ($1, pos $text);
                if ($head eq '{') { $refer->(@$_) for group_heads($text, $end) }
                else { $refer->($head, $end - length $head) }
            }
            # `super::` chains that climb to the crate root.
            while ($text =~ /(?<![A-Za-z0-9_])((?:super\s*::\s*)+)(\{|[A-Za-z_][A-Za-z0-9_]*)/g) {
                my ($chain, $head, $end) = ($1, $2, pos $text);
                my $ups = () = $chain =~ /super/g;
                next if $ups < @path;
                if ($head eq '{') { $refer->(@$_) for group_heads($text, $end) }
                else { $refer->($head, $end - length $head) }
            }
        }
    }
    return (\%modules, \%edges);
}

# Strongly connected components with more than one module (Tarjan).
sub cycles {
    my ($modules, $edges) = @_;
    my ($index, @stack, %on, %idx, %low, @sccs) = (0);
    my $visit;
    $visit = sub {
        my ($v) = @_;
        $idx{$v} = $low{$v} = $index++;
        push @stack, $v;
        $on{$v} = 1;
        for my $w (sort keys %{ $edges->{$v} || {} }) {
            if (!defined $idx{$w}) { $visit->($w); $low{$v} = $low{$w} if $low{$w} < $low{$v} }
            elsif ($on{$w}) { $low{$v} = $idx{$w} if $idx{$w} < $low{$v} }
        }
        if ($low{$v} == $idx{$v}) {
            my @scc;
            while (1) { my $w = pop @stack; $on{$w} = 0; push @scc, $w; last if $w eq $v }
            push @sccs, [sort @scc] if @scc > 1;
        }
    };
    for my $v (sort keys %$modules) { $visit->($v) unless defined $idx{$v} }
    return @sccs;
}

# One cycle through $start inside $scc, by breadth-first search back to it.
sub one_cycle {
    my ($start, $scc, $edges) = @_;
    my %in = map { $_ => 1 } @$scc;
    my %prev;
    my @queue = ($start);
    while (@queue) {
        my $v = shift @queue;
        for my $w (sort keys %{ $edges->{$v} || {} }) {
            next unless $in{$w};
            if ($w eq $start) {
                my @path = ($v);
                unshift @path, $prev{$path[0]} while defined $prev{$path[0]};
                return (@path, $start);
            }
            next if exists $prev{$w} || $w eq $start;
            $prev{$w} = $v;
            push @queue, $w;
        }
    }
    return ();
}

my $failed = 0;
my @crates = crates();
die "no crate matches @only\n" if @only && !@crates;
for my $crate (@crates) {
    my ($modules, $edges) = graph($crate);
    my $count = 0;
    $count += keys %{ $edges->{$_} } for keys %$edges;
    printf "%s: %d top-level modules, %d dependencies\n", $crate->{name}, scalar(keys %$modules), $count;
    if ($show_edges) {
        for my $from (sort keys %$modules) {
            my @to = sort keys %{ $edges->{$from} || {} };
            printf "  %-20s -> %s\n", $from, @to ? join(', ', @to) : '(none)';
        }
    }
    my @sccs = cycles($modules, $edges);
    if (!@sccs) {
        print "  no cycles\n";
        next;
    }
    $failed = 1;
    for my $scc (@sccs) {
        my @cycle = one_cycle($scc->[0], $scc, $edges);
        printf "  CYCLE among {%s}: %s\n", join(', ', @$scc), join(' -> ', @cycle);
        for my $i (0 .. $#cycle - 1) {
            my ($from, $to) = @cycle[$i, $i + 1];
            my @why = @{ $edges->{$from}{$to} };
            printf "    %s -> %s: %s%s\n", $from, $to, $why[0], @why > 1 ? sprintf(' (and %d more)', @why - 1) : '';
        }
    }
}
exit $failed;
PERL
